"""Real servers for the tests: vLLM's OpenAI server on a loopback port, as a subprocess."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class VLLMServer:
    """A running `vllm.entrypoints.openai.api_server` child process."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    served_model: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_vllm(
    model: Path,
    log_path: Path,
    *,
    served_model: str = "target",
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    timeout_s: float = 240.0,
) -> VLLMServer:
    """Start vLLM on the CPU (float32, eager, 1 GiB of KV cache) and wait until it is healthy."""
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(model),
        "--served-model-name",
        served_model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dtype",
        "float32",
        "--max-model-len",
        "4096",
        "--enforce-eager",
        "--seed",
        "0",
        *extra_args,
    ]
    child_env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", **(env or {})}
    child_env.pop("LD_PRELOAD", None)  # torch brings its own BLAS; keep vLLM as shipped
    log_file = log_path.open("wb")
    process = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=child_env)
    server = VLLMServer(process, port, log_path, served_model)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"vLLM exited with {process.returncode}:\n{server.log()[-4000:]}")
        try:
            if httpx.get(f"{server.url}/health", timeout=1.0).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    server.stop()
    raise RuntimeError(f"vLLM did not become healthy in {timeout_s:.0f}s:\n{server.log()[-4000:]}")
