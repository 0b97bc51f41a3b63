"""Real cloud parts for the tests: vLLM started by `cloud.launch`, and the gateway as a subprocess.

- `start_cloud_vllm(model, log)`: vLLM's OpenAI server from the `cpu` profile (LoRA on, runtime
  adapter loading allowed), bound to loopback, as `tests.servers.VLLMServer`.
- `start_gateway(vllm, folder, model_dir=...)`: `tandem cloud serve --upstream vllm.url` as a
  subprocess on a loopback port, with a fresh key file holding a user key and an admin key.
  Its request log goes to a file, so a test can grep exactly what an operator would see.
- `start_private_cloud(model, folder)`: a vLLM + gateway pair of its own, for tests that need
  to kill or stop the server (e.g. "vLLM dies mid-answer") without breaking the shared one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from cloud.gateway.keys import KeyStore
from cloud.launch import (
    LaunchError,
    LaunchOptions,
    VllmProcess,
    build_vllm_command,
    load_profile,
    stop_process_group,
)
from tests.servers import VLLMServer, free_port

REPO_ROOT = Path(__file__).resolve().parent.parent


class CloudVLLMServer(VLLMServer):
    """A VLLMServer in its own process group: stop() and crash() also end vLLM's engine-core
    and worker processes, which outlive an API server that is killed."""

    def stop(self) -> None:
        super().stop()
        stop_process_group(self.process.pid)

    def crash(self) -> None:
        """SIGKILL the whole server at once, as a crash or an OOM kill would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        stop_process_group(self.process.pid)


def start_cloud_vllm(
    model: Path,
    log_path: Path,
    *,
    served_model: str = "target",
    speculative: str | None = None,
    num_speculative_tokens: int | None = None,
    lora: bool = True,
    extra_args: Sequence[str] = (),
    timeout_s: float = 300.0,
) -> CloudVLLMServer:
    """vLLM on the CPU as `tandem cloud serve --profile cpu` would start it; waits until healthy."""
    options = LaunchOptions(
        model=str(model),
        served_model_name=served_model,
        port=free_port(),
        speculative=speculative,
        num_speculative_tokens=num_speculative_tokens,
        lora=lora,
        extra_args=tuple(extra_args),
    )
    command = build_vllm_command(options, load_profile("cpu"))
    log_file = log_path.open("wb")
    process = VllmProcess(command, log=log_file)
    process.start()
    assert process.process is not None
    server = CloudVLLMServer(process.process, command.port, log_path, served_model)
    try:
        process.wait_healthy(timeout_s)
    except LaunchError as exc:
        server.stop()
        raise RuntimeError(f"{exc}:\n{server.log()[-4000:]}") from None
    return server


@dataclass
class GatewayServer:
    """A running `tandem cloud serve --upstream ...` subprocess."""

    process: subprocess.Popen[bytes]
    port: int
    api_key: str
    """A user key (name "alice")."""
    admin_key: str
    """A key that may read /metrics and /gateway/metrics (name "admin")."""
    keys_file: Path
    adapters_dir: Path
    log_path: Path
    """The gateway's request log (--log-file)."""
    output_path: Path
    """Everything the process printed (stdout + stderr)."""
    vllm: VLLMServer | None
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def add_key(self, name: str, *, admin: bool = False) -> str:
        """Make another key (the running gateway sees it at once)."""
        return KeyStore(self.keys_file).add(name, admin=admin)

    def revoke_key(self, name: str) -> None:
        KeyStore(self.keys_file).revoke(name)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def gateway_metrics(self) -> dict[str, float]:
        """The gateway's own counters (admin key)."""
        from cloud.gateway.admission import parse_metrics

        response = httpx.get(
            f"{self.url}/gateway/metrics",
            headers={"Authorization": f"Bearer {self.admin_key}"},
            # Generous: while vLLM's CPU workers spin on both cores during a long answer, the
            # gateway's process may wait seconds for a turn (CI measured more than 10 s).
            timeout=60,
            verify=False,
        )
        response.raise_for_status()
        return parse_metrics(response.text)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_gateway(
    vllm: VLLMServer | None,
    folder: Path,
    *,
    model_dir: Path,
    upstream_url: str | None = None,
    served_model: str = "target",
    extra_args: Sequence[str] = (),
    tls: tuple[Path, Path] | None = None,
    timeout_s: float = 60.0,
    queue_wait_s: float = 0.0,
) -> GatewayServer:
    """Start the gateway in front of `vllm` (or any `upstream_url`) and wait until it answers.

    `queue_wait_s`: how long clients without the tandem client's fallback header may wait for
    a slot (the profile's 2 s would turn the fast 429s these tests expect into waits)."""
    folder.mkdir(parents=True, exist_ok=True)
    keys_file = folder / "keys.json"
    store = KeyStore(keys_file)
    api_key = store.add("alice")
    admin_key = store.add("admin", admin=True)
    port = free_port()
    upstream = upstream_url or (vllm.url if vllm else "")
    argv = [
        sys.executable, "-m", "tui.cli", "cloud", "serve",
        "--profile", "cpu",
        "--model", str(model_dir),
        "--served-model-name", vllm.served_model if vllm else served_model,
        "--upstream", upstream,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--keys-file", str(keys_file),
        "--adapters-dir", str(folder / "adapters"),
        "--log-file", str(folder / "gateway.log"),
        "--max-queue-wait-s", str(queue_wait_s),
    ]  # fmt: skip
    if tls is not None:
        argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    argv += list(extra_args)
    output_path = folder / "gateway.out"
    env = {**os.environ}
    env.pop("LD_PRELOAD", None)
    process = subprocess.Popen(
        argv, stdout=output_path.open("wb"), stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env
    )
    gateway = GatewayServer(
        process, port, api_key, admin_key, keys_file, folder / "adapters",
        folder / "gateway.log", output_path, vllm, "https" if tls else "http",
    )  # fmt: skip
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with {process.returncode}:\n{gateway.output()}")
        try:
            httpx.get(f"{gateway.url}/health", timeout=2.0, verify=False)
            return gateway
        except httpx.TransportError:
            time.sleep(0.2)
    gateway.stop()
    raise RuntimeError(f"the gateway did not start in {timeout_s:.0f}s:\n{gateway.output()}")


@dataclass
class PrivateCloud:
    """A vLLM + gateway pair owned by one test, which may kill either."""

    vllm: CloudVLLMServer
    gateway: GatewayServer

    @property
    def url(self) -> str:
        return self.gateway.url

    @property
    def api_key(self) -> str:
        return self.gateway.api_key

    def kill_vllm(self) -> None:
        """SIGKILL vLLM and its engine processes (a crash): open streams through the gateway
        break mid-answer, and new requests get 503."""
        self.vllm.crash()

    def stop(self) -> None:
        self.gateway.stop()
        self.vllm.stop()


def start_private_cloud(
    model: Path,
    folder: Path,
    *,
    speculative: str | None = None,
    gateway_args: Sequence[str] = (),
) -> PrivateCloud:
    """A separate vLLM (~20 s, ~2 GB) and gateway. Call .stop() when done."""
    folder.mkdir(parents=True, exist_ok=True)
    vllm = start_cloud_vllm(model, folder / "vllm.log", speculative=speculative)
    try:
        gateway = start_gateway(vllm, folder / "gateway", model_dir=model, extra_args=gateway_args)
    except BaseException:
        vllm.stop()
        raise
    return PrivateCloud(vllm, gateway)


async def keep_busy(url: str, n: int, *, max_tokens: int = 2000) -> None:
    """`n` long generations straight to vLLM at `url`, until cancelled or done: alone, the tiny
    model finishes an answer before a test can cut it mid-way (kill vLLM, drop the gateway)."""
    import asyncio

    body = {
        "model": "target",
        "messages": [{"role": "user", "content": "Tell me a very long story. " * 20}],
        "max_tokens": max_tokens,
        "temperature": 1.0,
        "seed": 1,
    }
    async with httpx.AsyncClient(timeout=None) as client:

        async def one() -> None:
            with contextlib.suppress(httpx.HTTPError):
                await client.post(f"{url}/v1/chat/completions", json=body)

        await asyncio.gather(*(one() for _ in range(n)))
