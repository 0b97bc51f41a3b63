"""Speculative decoding on real vLLM servers of their own (one at a time, ~20 s each):

- `ngram`, started the way a self-hoster does it: `tandem cloud serve --speculative ngram`
  (launcher + gateway in one process); SIGTERM stops both.
- `draft_model` with the target as its own draft, so every draft token must be accepted; on
  the same server: a LoRA adapter is served together with speculation, and killing vLLM in
  the middle of an answer reaches the client as Unavailable.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from cloud.client import CloudClient
from cloud.gateway.admission import parse_metrics
from cloud.gateway.keys import KeyStore
from cloud.launch import stop_process_group
from router.protocol import ChatRequest, Message, Sampling, Unavailable, collect
from scripts.testmodels import ModelSet
from tests.cloud_servers import REPO_ROOT, PrivateCloud, start_private_cloud
from tests.reference import vllm_greedy
from tests.servers import VLLMServer, free_port
from tests.test_cloud_adapters import make_adapter, upload

pytestmark = pytest.mark.vllm

RIVER = "Tell me about the river."


def _spec_counts(metrics_text: str) -> tuple[float, float]:
    values = parse_metrics(metrics_text)
    return (
        values.get("vllm:spec_decode_num_draft_tokens_total", 0.0),
        values.get("vllm:spec_decode_num_accepted_tokens_total", 0.0),
    )


def _chat(url: str, key: str, messages: list[dict[str, str]], max_tokens: int = 80) -> str:
    response = httpx.post(
        f"{url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "target", "messages": messages, "max_tokens": max_tokens, "temperature": 0},
        timeout=180,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["choices"][0]["message"]["content"])


class _Serve:
    """`tandem cloud serve` as a subprocess (launcher + gateway)."""

    def __init__(self, process: subprocess.Popen[bytes], url: str, key: str, admin: str,
                 output: Path) -> None:  # fmt: skip
        self.process, self.url, self.key, self.admin, self.output = (
            process, url, key, admin, output,
        )  # fmt: skip

    def vllm_pid(self) -> int:
        found = re.search(r"vLLM pid (\d+)", self.output.read_text())
        assert found, self.output.read_text()
        return int(found[1])


@pytest.fixture(scope="class")
def ngram_serve(
    test_models: ModelSet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[_Serve]:
    folder = Path(tmp_path_factory.mktemp("ngram-serve"))
    store = KeyStore(folder / "keys.json")
    key, admin = store.add("alice"), store.add("ops", admin=True)
    port = free_port()
    argv = [
        sys.executable, "-m", "tui.cli", "cloud", "serve",
        "--profile", "cpu", "--model", str(test_models.target), "--served-model-name", "target",
        "--speculative", "ngram", "--num-speculative-tokens", "3",
        "--host", "127.0.0.1", "--port", str(port), "--vllm-port", str(free_port()),
        "--keys-file", str(folder / "keys.json"), "--adapters-dir", str(folder / "adapters"),
        "--log-file", str(folder / "gateway.log"), "--vllm-log", str(folder / "vllm.log"),
    ]  # fmt: skip
    output = folder / "serve.out"
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    process = subprocess.Popen(
        argv, stdout=output.open("wb"), stderr=subprocess.STDOUT, cwd=REPO_ROOT, env=env
    )
    serve = _Serve(process, f"http://127.0.0.1:{port}", key, admin, output)
    deadline = time.monotonic() + 300
    try:
        while True:
            assert process.poll() is None, output.read_text()
            assert time.monotonic() < deadline, "tandem cloud serve did not come up"
            try:
                if httpx.get(f"{serve.url}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        yield serve
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        with contextlib.suppress(AssertionError):
            stop_process_group(serve.vllm_pid())  # vLLM leads its own process group


class TestNgram:
    def test_ngram_speculation_accepts_tokens_on_an_edit_style_prompt(
        self, ngram_serve: _Serve
    ) -> None:
        s = ngram_serve
        paragraph = _chat(s.url, s.key, [{"role": "user", "content": RIVER}])
        assert len(paragraph.split()) > 10  # a paragraph the edit prompt can quote
        admin = {"Authorization": f"Bearer {s.admin}"}
        drafted0, accepted0 = _spec_counts(httpx.get(f"{s.url}/metrics", headers=admin).text)
        # The answer repeats text that is already in the prompt: what ngram lookup is for.
        edit = [{"role": "user", "content": f"{paragraph}\n\n{RIVER}"}]
        _chat(s.url, s.key, edit)
        drafted, accepted = _spec_counts(httpx.get(f"{s.url}/metrics", headers=admin).text)
        assert drafted > drafted0
        assert accepted > accepted0

    def test_sigterm_stops_the_gateway_and_vllm(self, ngram_serve: _Serve) -> None:
        pid = ngram_serve.vllm_pid()
        ngram_serve.process.send_signal(signal.SIGTERM)
        assert ngram_serve.process.wait(timeout=60) == 0
        deadline = time.monotonic() + 30
        while _alive(pid):
            assert time.monotonic() < deadline, "vLLM (or its engine) outlived the launcher"
            time.sleep(0.2)


def _alive(pgid: int) -> bool:
    """Whether any process of vLLM's group (API server, engine core, workers) is left."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    # Exited processes whose parent is gone are reaped by init shortly; they do not count.
    for status in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = status.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                return True
    return False


@pytest.fixture(scope="class")
def draft_cloud(
    test_models: ModelSet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrivateCloud]:
    cloud = start_private_cloud(
        test_models.target,
        Path(tmp_path_factory.mktemp("draft-cloud")),
        speculative=f"draft:{test_models.target}",
    )
    try:
        yield cloud
    finally:
        cloud.stop()


class TestDraftModel:
    def test_the_target_as_its_own_draft_accepts_every_draft_token(
        self, draft_cloud: PrivateCloud, vllm_server: VLLMServer
    ) -> None:
        c = draft_cloud
        before = _spec_counts(httpx.get(f"{c.vllm.url}/metrics").text)
        text = _chat(c.url, c.api_key, [{"role": "user", "content": RIVER}])
        # Speculation changes the cost, not the greedy answer (the same server without it).
        assert text == vllm_greedy(vllm_server.url, vllm_server.served_model, RIVER, 80)
        drafted, accepted = _spec_counts(httpx.get(f"{c.vllm.url}/metrics").text)
        assert drafted - before[0] > 0
        assert accepted - before[1] == drafted - before[0]

    def test_a_lora_adapter_is_served_with_speculation_on(self, draft_cloud: PrivateCloud) -> None:
        c = draft_cloud
        config, weights = make_adapter()
        assert upload(c.gateway, c.api_key, "tuned", config, weights).status_code == 201
        response = httpx.post(
            f"{c.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {c.api_key}"},
            json={"model": "tuned", "messages": [{"role": "user", "content": RIVER}],
                  "max_tokens": 12, "temperature": 0},
            timeout=120,
        )  # fmt: skip
        assert response.status_code == 200, response.text
        base = _chat(c.url, c.api_key, [{"role": "user", "content": RIVER}], max_tokens=12)
        assert response.json()["choices"][0]["message"]["content"] != base  # the adapter acts

    async def test_vllm_dying_mid_answer_cuts_the_stream_and_the_client_sees_unavailable(
        self, draft_cloud: PrivateCloud
    ) -> None:
        c = draft_cloud
        body = {"model": "target", "prompt": "The river", "max_tokens": 3000, "ignore_eos": True,
                "stream": True}  # fmt: skip
        lines: list[str] = []
        with httpx.stream(
            "POST", f"{c.url}/v1/completions", json=body, timeout=120,
            headers={"Authorization": f"Bearer {c.api_key}"},
        ) as response:  # fmt: skip
            assert response.status_code == 200
            try:
                for line in response.iter_lines():
                    lines.append(line)
                    if len(lines) == 4:
                        c.kill_vllm()
            except httpx.HTTPError:
                pass  # a cut chunked body may also surface as a protocol error
        # The body ended early and without [DONE]: the client can tell the answer is incomplete.
        assert "data: [DONE]" not in lines
        data = [json.loads(x[6:]) for x in lines if x.startswith("data: ")]
        assert all(d["choices"][0].get("finish_reason") is None for d in data if d["choices"])
        request = ChatRequest((Message("user", RIVER),), Sampling(max_tokens=8))
        async with CloudClient(c.url, c.api_key, model="target") as client:
            with pytest.raises(Unavailable):
                await collect(client.stream(request))
            assert not (await client.health()).ok
