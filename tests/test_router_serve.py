"""`tandem serve`: the real command as a subprocess (real MLX engine, real gateway + vLLM),
driven by the official `openai` client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from router.serve import BadRequest, parse_chat_request
from scripts.testmodels import ModelSet
from tests.reference import mlx_greedy, vllm_greedy
from tests.servers import free_port

REPO_ROOT = Path(__file__).resolve().parent.parent
FRANCE = "What is the capital of France?"


def _said(side: str, models: ModelSet, gateway: Any, max_tokens: int) -> str:
    """The greedy answer of that side's engine on this machine, asked directly."""
    if side == "local":
        return mlx_greedy(models.target, FRANCE, max_tokens=max_tokens)
    return vllm_greedy(gateway.vllm.url, gateway.vllm.served_model, FRANCE, max_tokens)


@pytest.fixture(scope="module")
def tandem_serve(
    test_models: ModelSet, cloud_gateway: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`tandem serve` on a free loopback port, configured with the session's cloud."""
    home = tmp_path_factory.mktemp("serve-home")
    (home / "config").mkdir()
    (home / "config" / "config.toml").write_text(
        f'cloud_url = "{cloud_gateway.url}"\nprivacy_terms = ["Falconia"]\n'
    )
    port = free_port()
    env = {**os.environ, "TANDEM_HOME": str(home), "TANDEM_CLOUD_API_KEY": cloud_gateway.api_key}
    log = (home / "serve.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "tui.cli", "serve", "--model", str(test_models.target),
         "--port", str(port), "--max-tokens", "16"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=REPO_ROOT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if process.poll() is not None:
                raise RuntimeError((home / "serve.log").read_text())
            try:
                if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "tandem serve did not start:\n" + (home / "serve.log").read_text()
                )
            time.sleep(0.3)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.mark.mlx
@pytest.mark.vllm
def test_the_openai_client_streams_from_tandem_serve(
    tandem_serve: str, test_models: ModelSet, cloud_gateway: Any
) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{tandem_serve}/v1", api_key="unused")
    assert {m.id for m in client.models.list()} == {"tandem", "tandem-local", "tandem-cloud"}
    raw = client.chat.completions.with_raw_response.create(
        model="tandem",
        messages=[{"role": "user", "content": "What is the capital of France?"}],
        stream=True,
        max_tokens=12,
        temperature=0,
    )
    header = json.loads(raw.headers["x-tandem-route"])
    chunks = list(raw.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == _said(header["backend"], test_models, cloud_gateway, 12)
    last = chunks[-1]
    assert last.choices[0].finish_reason in ("stop", "length")
    route = last.model_extra["tandem_route"] if last.model_extra else None
    assert route is not None and route["backend"] == header["backend"] and route["reason"]


@pytest.mark.mlx
@pytest.mark.vllm
def test_tandem_serve_routes_per_request_and_says_why(
    tandem_serve: str, test_models: ModelSet, cloud_gateway: Any
) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{tandem_serve}/v1", api_key="unused")
    question = [{"role": "user", "content": "What is the capital of France?"}]
    cloud = client.chat.completions.with_raw_response.create(
        model="tandem-cloud", messages=question, max_tokens=12, temperature=0
    )
    body = cloud.parse()
    assert body.choices[0].message.content == _said("cloud", test_models, cloud_gateway, 12)
    route = json.loads(cloud.headers["x-tandem-route"])
    assert (route["backend"], route["rule"]) == ("cloud", "pin")
    assert body.model_extra and body.model_extra["tandem_route"]["rule"] == "pin"
    private = client.chat.completions.with_raw_response.create(
        model="tandem-cloud",
        messages=[{"role": "user", "content": "What is the capital of Falconia?"}],
        max_tokens=6,
    )
    route = json.loads(private.headers["x-tandem-route"])
    assert (route["backend"], route["rule"]) == ("local", "privacy")
    assert route["reason"] == "private term in message 1 → kept on this device"


def test_parse_chat_request_maps_openai_fields() -> None:
    request, stream, usage = parse_chat_request(
        {
            "model": "tandem-local",
            "messages": [
                {"role": "developer", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": "Hel"},
            ],
            "max_completion_tokens": 7,
            "stop": "\n",
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    )
    assert [m.role for m in request.messages] == ["system", "user"]
    assert request.messages[1].content == "hi"
    assert request.continue_from == "Hel"  # a trailing assistant message is continued
    assert request.sampling.max_tokens == 7 and request.sampling.stop == ("\n",)
    assert (request.pin, stream, usage) == ("local", True, True)


@pytest.mark.parametrize(
    "body",
    [[], {"messages": []}, {"messages": [{"role": "robot", "content": "x"}]}, {"messages": "x"}],
)
def test_parse_chat_request_refuses_bad_bodies(body: Any) -> None:
    with pytest.raises(BadRequest):
        parse_chat_request(body)


def test_serve_refuses_a_public_address() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tui.cli", "serve", "--host", "0.0.0.0"],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert "not a loopback address" in result.stderr and "Traceback" not in result.stderr
