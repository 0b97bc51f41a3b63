"""Session-wide real parts: the test models and one vLLM server shared by every test."""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from scripts.testmodels import ModelSet, build
from tests.servers import VLLMServer
from tui.cli import keep_torch_out

_EXIT_STATUS = pytest.StashKey[int]()

# As in the `tandem` command: transformers (under mlx-lm) imports torch whenever it is
# installed, and torch brings triton, whose bindings print hundreds of "nanobind: leaked"
# lines at exit, after pytest's summary. Nothing the tests run in this process needs torch;
# the test models are trained in a child process (scripts.testmodels.build), vLLM runs as a
# server process.
keep_torch_out()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the process right after pytest's summary, with pytest's own exit status.

    What runs after this is only the interpreter's teardown, where native extensions (MLX's
    worker threads, tokenizers) may print leak reports or crash after every test passed; the
    summary must be the last thing printed, and the status must be pytest's."""
    status = config.stash.get(_EXIT_STATUS, None)
    if status is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


@pytest.fixture(scope="session")
def test_models() -> ModelSet:
    """The tiny trained target and draft models (built once, cached between runs; the
    training runs in a child process, as this one keeps torch out)."""
    return build()


@pytest.fixture(scope="session")
def vllm_server(
    test_models: ModelSet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VLLMServer]:
    """vLLM's OpenAI server on the target model, started once per test session.

    Started by the cloud launcher (`cloud.launch.build_vllm_command`, `cpu` profile), the same
    way `tandem cloud serve` starts it: loopback only, float32, eager, served name "target",
    LoRA on (`--enable-lora --max-lora-rank 8 --max-loras 4`, runtime loading allowed via
    VLLM_ALLOW_RUNTIME_LORA_UPDATING=1, so tests may POST /v1/load_lora_adapter), no API key.
    """
    from tests.cloud_servers import start_cloud_vllm

    log = Path(tmp_path_factory.mktemp("vllm")) / "vllm.log"
    server = start_cloud_vllm(test_models.target, log)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def thinking_model() -> Path:
    """The Qwen3-shaped test model (scripts/thinkingmodel.py): thinks in `<think>`, calls
    `get_weather(city)`. Built in a child process on first use (~2 min), cached after."""
    folder = build(thinking=True).thinking
    assert folder is not None
    return folder


@pytest.fixture(scope="module")
async def thinking_engine(thinking_model: Path) -> AsyncIterator[Any]:
    """The local engine on the thinking model, one per test module (the chat tests share it
    across apps; each app's composition leaves it open)."""
    from local.engine import LocalEngine

    engine = LocalEngine(thinking_model, memory_guard=False)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.aclose()


@pytest.fixture(scope="session")
def thinking_vllm_server(
    thinking_model: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VLLMServer]:
    """vLLM on the thinking model, started once per session by the launcher (cpu profile,
    LoRA off) with the parsers it picks for the family: `--reasoning-parser qwen3
    --enable-auto-tool-choice --tool-call-parser hermes`; served name "thinking". Another
    ~2 GB and ~25 s: request it only in tests that need vLLM's reasoning or tool calls."""
    from tests.cloud_servers import start_cloud_vllm

    log = Path(tmp_path_factory.mktemp("vllm-thinking")) / "vllm.log"
    server = start_cloud_vllm(thinking_model, log, served_model="thinking", lora=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def cloud_gateway(
    test_models: ModelSet, vllm_server: VLLMServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """The real gateway (`tandem cloud serve --upstream`, a subprocess on a loopback port) in
    front of `vllm_server`, started once per session.

    A `tests.cloud_servers.GatewayServer`: `.url`, `.api_key` (user key "alice"), `.admin_key`,
    `.add_key(name, admin=False) -> key`, `.revoke_key(name)`, `.keys_file`, `.log_path` (the
    request log), `.log()`, `.gateway_metrics()`, `.vllm`. The cpu profile's admission limits
    (16 in flight, 4 concurrent per key) with 50 requests/s per key (burst 100); adapter
    uploads up to 1 MiB. Use `cloud.client.CloudClient(gw.url, gw.api_key)` as the Backend.
    For a vLLM + gateway pair a test may kill (`.kill_vllm()`, `.stop()`), call
    `tests.cloud_servers.start_private_cloud(test_models.target, tmp_path)` (~20 s, ~2 GB).
    """
    from tests.cloud_servers import start_gateway

    folder = Path(tmp_path_factory.mktemp("cloud-gateway"))
    gateway = start_gateway(
        vllm_server,
        folder,
        model_dir=test_models.target,
        extra_args=["--max-adapter-bytes", str(2**20), "--rate-per-second", "50", "--burst", "100"],
    )
    try:
        yield gateway
    finally:
        gateway.stop()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def tui_local_engine(test_models: ModelSet) -> AsyncIterator[Any]:
    """The real local engine on the test target, started once for the chat app's tests."""
    from local.engine import LocalEngine

    engine = LocalEngine(test_models.target)
    await engine.start()
    try:
        yield engine
    finally:
        await engine.aclose()


@pytest.fixture(scope="session")
def finetuned_adapter(test_models: ModelSet, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A LoRA adapter (rank 8, 60 steps) trained once on the generated secret-word task
    (`scripts.finetunedata`): answers start "Ahoy! The secret word for X is Y."

    A namespace: `.registry` (local.finetune.registry.AdapterRegistry in a temp folder),
    `.name`, `.folder` (mlx-lm layout), `.data` (the JSONL file), `.record`, `.home` (a
    TANDEM_HOME whose adapters folder is the registry's), `.model` (the target's folder).
    """
    from types import SimpleNamespace

    from local.finetune.registry import AdapterRegistry
    from local.finetune.train import TrainConfig, run_training
    from scripts.finetunedata import secret_word_rows, write_jsonl

    home = Path(tmp_path_factory.mktemp("finetune-home"))
    registry = AdapterRegistry(home / "data" / "adapters")
    data = write_jsonl(home / "secret.jsonl", secret_word_rows(160))
    config = TrainConfig(
        model=str(test_models.target), data=data, name="secret", iters=60, batch_size=8,
        learning_rate=3e-4, max_seq_len=256, steps_per_report=20, steps_per_eval=30,
    )
    result = run_training(config, registry=registry, cache_dir=home / "cache" / "finetune")
    return SimpleNamespace(
        registry=registry, name="secret", folder=result.folder, data=data,
        record=result.record, home=home, model=test_models.target,
    )


@pytest.fixture
def mcp_http_server() -> Iterator[str]:
    """The tests' MCP server (tests/mcp_weather.py) over streamable HTTP on loopback; its
    get_weather reports "windy" (the stdio one: "foggy"). Yields the URL."""
    import subprocess
    import time

    import httpx

    from tests.servers import free_port

    port = free_port()
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "WEATHER_CONDITION": "windy"}
    proc = subprocess.Popen([sys.executable, "-m", "tests.mcp_weather", "--http", str(port)],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/mcp"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                httpx.get(url, timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
