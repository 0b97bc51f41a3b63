"""`tandem cloud serve` as an operator runs it (vLLM started as its child): when vLLM dies, the
gateway does not linger answering 503 to everyone; it stops, exits non-zero and says why."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from cloud.gateway.keys import KeyStore
from scripts.testmodels import ModelSet
from tests.servers import free_port

REPO_ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.vllm


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert process.poll() is None, "tandem cloud serve exited while starting"
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise AssertionError(f"the gateway at {url} did not come up in {timeout_s:.0f} s")


def test_the_gateway_stops_and_says_so_when_its_vllm_dies(
    test_models: ModelSet, tmp_path: Path
) -> None:
    KeyStore(tmp_path / "keys.json").add("alice")
    port = free_port()
    argv = [
        sys.executable, "-m", "tui.cli", "cloud", "serve",
        "--profile", "cpu",
        "--model", str(test_models.target),
        "--served-model-name", "target",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--vllm-port", str(free_port()),
        "--keys-file", str(tmp_path / "keys.json"),
        "--adapters-dir", str(tmp_path / "adapters"),
        "--vllm-log", str(tmp_path / "vllm.log"),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    errors = tmp_path / "serve.err"
    vllm_pid: int | None = None
    with errors.open("wb") as err:
        serve = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO_ROOT, env=env
        )
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", serve, timeout_s=400)
        found = re.search(r"vLLM pid (\d+)", errors.read_text())
        assert found, errors.read_text()
        vllm_pid = int(found.group(1))
        os.killpg(vllm_pid, signal.SIGKILL)  # vLLM and its engine processes crash at once

        code = serve.wait(timeout=60)
        said = errors.read_text()
        assert code == 1, said
        assert "vLLM exited unexpectedly; the gateway stopped too" in said
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
        if vllm_pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(vllm_pid, signal.SIGKILL)
