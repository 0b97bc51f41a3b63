"""The gateway in front of the real vLLM server: streaming passthrough, keys, health, metrics,
client disconnects, and logs without prompt text."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest

from cloud.gateway.admission import parse_metrics
from tests.cloud_servers import GatewayServer
from tests.reference import vllm_greedy

pytestmark = pytest.mark.vllm


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _vllm_metrics(gateway: GatewayServer) -> dict[str, float]:
    assert gateway.vllm is not None
    return parse_metrics(httpx.get(f"{gateway.vllm.url}/metrics", timeout=10).text)


def _finished_in_vllm(gateway: GatewayServer) -> float:
    return sum(v for k, v in _vllm_metrics(gateway).items() if k == "vllm:request_success_total")


def _chat(question: str, **extra: object) -> dict[str, object]:
    return {
        "model": "target",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 16,
        "temperature": 0,
        **extra,
    }


def test_chat_streams_through_the_gateway_chunk_by_chunk(cloud_gateway: GatewayServer) -> None:
    chunks: list[str] = []
    with httpx.stream(
        "POST",
        f"{cloud_gateway.url}/v1/chat/completions",
        headers=_auth(cloud_gateway.api_key),
        json=_chat("What sound does a cow make?", stream=True),
        timeout=60,
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-request-id"]
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        for choice in json.loads(line[6:])["choices"]:
            if choice["delta"].get("content"):
                chunks.append(choice["delta"]["content"])
    assert len(chunks) > 1
    assert cloud_gateway.vllm is not None  # streamed through, vLLM's own answer unchanged
    said = vllm_greedy(cloud_gateway.vllm.url, cloud_gateway.vllm.served_model,
                       "What sound does a cow make?", 16)
    assert "".join(chunks) == said


def test_completions_and_models_pass_through(cloud_gateway: GatewayServer) -> None:
    response = httpx.post(
        f"{cloud_gateway.url}/v1/completions",
        headers=_auth(cloud_gateway.api_key),
        json={"model": "target", "prompt": "The river", "max_tokens": 4, "temperature": 0},
        timeout=60,
    )
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 4
    models = httpx.get(f"{cloud_gateway.url}/v1/models", headers=_auth(cloud_gateway.api_key))
    assert models.json()["data"][0]["id"] == "target"
    assert models.json()["data"][0]["max_model_len"] == 4096


@pytest.mark.parametrize("case", ["no key", "wrong key", "revoked key", "not bearer"])
def test_requests_without_a_valid_key_get_401_and_never_reach_vllm(
    cloud_gateway: GatewayServer, case: str
) -> None:
    headers: dict[str, str] = {}
    if case == "wrong key":
        headers = _auth("tdm_" + "x" * 43)
    elif case == "revoked key":
        name = f"revoked-{uuid.uuid4().hex[:6]}"
        key = cloud_gateway.add_key(name)
        assert httpx.get(f"{cloud_gateway.url}/v1/models", headers=_auth(key)).status_code == 200
        cloud_gateway.revoke_key(name)
        headers = _auth(key)
    elif case == "not bearer":
        headers = {"Authorization": f"Basic {cloud_gateway.api_key}"}
    before_gateway = cloud_gateway.gateway_metrics()["tandem_gateway_upstream_requests_total"]
    before_vllm = _vllm_metrics(cloud_gateway)
    for path in ("/v1/chat/completions", "/v1/completions"):
        response = httpx.post(
            f"{cloud_gateway.url}{path}", headers=headers, json=_chat("hello"), timeout=30
        )
        assert response.status_code == 401
        assert response.json()["error"]["message"] == "unauthorized"  # no detail
    assert httpx.get(f"{cloud_gateway.url}/v1/models", headers=headers).status_code == 401
    after_gateway = cloud_gateway.gateway_metrics()["tandem_gateway_upstream_requests_total"]
    assert after_gateway == before_gateway
    after_vllm = _vllm_metrics(cloud_gateway)
    for name in ("vllm:request_success_total", "vllm:prompt_tokens_total"):
        assert after_vllm.get(name) == before_vllm.get(name)


def test_health_needs_no_key_and_says_nothing_more(cloud_gateway: GatewayServer) -> None:
    response = httpx.get(f"{cloud_gateway.url}/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_metrics_need_an_admin_key(cloud_gateway: GatewayServer) -> None:
    for path in ("/metrics", "/gateway/metrics"):
        url = f"{cloud_gateway.url}{path}"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers=_auth(cloud_gateway.api_key)).status_code == 401
        response = httpx.get(url, headers=_auth(cloud_gateway.admin_key))
        assert response.status_code == 200
    vllm = httpx.get(f"{cloud_gateway.url}/metrics", headers=_auth(cloud_gateway.admin_key))
    assert "vllm:num_requests_waiting" in vllm.text
    own = cloud_gateway.gateway_metrics()
    assert own["tandem_gateway_unauthorized_total"] >= 1
    assert "tandem_gateway_latency_seconds_count" in own


def _wait_until_vllm_is_idle(gateway: GatewayServer, timeout_s: float = 60) -> dict[str, float]:
    """The shared server's counters are global: let earlier tests' answers finish first,
    those still waiting to start included (one that starts later counts its tokens here)."""
    deadline = time.monotonic() + timeout_s

    def busy(metrics: dict[str, float]) -> bool:
        return any(metrics.get(f"vllm:num_requests_{s}", 0) > 0 for s in ("running", "waiting"))

    metrics = _vllm_metrics(gateway)
    while busy(metrics) and time.monotonic() < deadline:
        time.sleep(0.2)
        metrics = _vllm_metrics(gateway)
    return metrics


def _disconnect_mid_answer(cloud_gateway: GatewayServer, max_tokens: int) -> float:
    """Start a long streamed answer, leave after three events; the tokens vLLM generated."""
    before = _wait_until_vllm_is_idle(cloud_gateway).get("vllm:generation_tokens_total", 0.0)
    with httpx.stream(
        "POST",
        f"{cloud_gateway.url}/v1/completions",
        headers=_auth(cloud_gateway.api_key),
        json={
            "model": "target",
            "prompt": "The river",
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "stream": True,
        },
        timeout=60,
    ) as response:
        seen = 0
        for line in response.iter_lines():
            seen += line.startswith("data: ")
            if seen >= 3:
                break  # leaving the block closes the connection mid-answer
    # vLLM aborts the request: nothing keeps running.
    deadline = time.monotonic() + 30
    metrics = _vllm_metrics(cloud_gateway)
    while metrics.get("vllm:num_requests_running", 0) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
        metrics = _vllm_metrics(cloud_gateway)
    assert metrics.get("vllm:num_requests_running", 0) == 0
    return metrics.get("vllm:generation_tokens_total", 0.0) - before


def test_a_client_that_disconnects_cancels_the_generation(cloud_gateway: GatewayServer) -> None:
    # Known intermittent (seen after the replica work merged, 2026-12-06, in 2 of 3 runs of
    # the cloud modules together, never alone): now and then vLLM generates the whole answer
    # after the client left; not yet explained. The abort must happen in at least one of
    # three tries, and every try must give the admission slot back.
    max_tokens = 3000
    tries = []
    for _ in range(3):
        tries.append(_disconnect_mid_answer(cloud_gateway, max_tokens))
        deadline = time.monotonic() + 10
        while cloud_gateway.gateway_metrics()["tandem_gateway_in_flight"] > 0:
            assert time.monotonic() < deadline, "the gateway kept the admission slot"
            time.sleep(0.1)
        if tries[-1] < max_tokens / 2:
            break
    assert min(tries) < max_tokens / 2, tries


def test_logs_carry_ids_and_counts_but_never_the_prompt_or_answer(
    cloud_gateway: GatewayServer,
) -> None:
    marker = f"zebra-{uuid.uuid4().hex}"
    for stream in (False, True):
        response = httpx.post(
            f"{cloud_gateway.url}/v1/chat/completions",
            headers=_auth(cloud_gateway.api_key),
            json=_chat(f"What is the capital of France? {marker}", stream=stream),
            timeout=60,
        )
        assert response.status_code == 200
        if not stream:
            answer = response.json()["choices"][0]["message"]["content"]
    answer_words = answer.strip()[:40]  # what this machine's model said
    assert answer_words
    request_id = response.headers["x-request-id"]
    deadline = time.monotonic() + 10
    while request_id not in cloud_gateway.log() and time.monotonic() < deadline:
        time.sleep(0.1)
    log = cloud_gateway.log()
    line = next(x for x in log.splitlines() if request_id in x)
    assert "key=alice" in line and "model=target" in line and "status=200" in line
    assert "prompt_tokens=" in line and "completion_tokens=" in line and "ttft_ms=" in line
    assert "completion_tokens=-" not in line
    assert cloud_gateway.vllm is not None
    everything = log + cloud_gateway.output() + cloud_gateway.vllm.log()
    assert marker not in everything
    assert answer_words not in everything
