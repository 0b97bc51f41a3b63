"""Session-wide real parts: the test models and one vLLM server shared by every test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from scripts.testmodels import ModelSet, build
from tests.servers import VLLMServer, start_vllm


@pytest.fixture(scope="session")
def test_models() -> ModelSet:
    """The tiny trained target and draft models (built once, cached between runs)."""
    return build()


@pytest.fixture(scope="session")
def vllm_server(
    test_models: ModelSet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[VLLMServer]:
    """vLLM's OpenAI server on the target model, started once per test session."""
    log = Path(tmp_path_factory.mktemp("vllm")) / "vllm.log"
    server = start_vllm(test_models.target, log)
    try:
        yield server
    finally:
        server.stop()
