"""The hybrid backend's failover and breaker logic, driven by small fault-injecting backends.

`Scripted` below injects faults at exact points (after the n-th delta, before the first, on a
chosen call): it is the subject's counterpart for faults, not a stand-in for an engine. The
same behaviours against the real MLX engine and the real vLLM + gateway are in
tests/test_router_hybrid.py.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing
from typing import Any

import pytest

from router.health import BreakerSettings
from router.hybrid import BothFailed, HybridBackend
from router.policy import RouterSettings
from router.protocol import (
    BackendError,
    Capabilities,
    ChatRequest,
    Final,
    Health,
    Message,
    ModelError,
    Overloaded,
    Route,
    Routed,
    Sampling,
    StreamEvent,
    TextDelta,
    Unauthorized,
    Unavailable,
    Usage,
    collect,
)

ANSWER = ["The ", "capital ", "of ", "France ", "is ", "Paris."]


class Scripted:
    """Injects faults: streams ANSWER (or its rest, when asked to continue) and raises
    `fail_with` after `fail_after` deltas on the calls listed in `fail_calls`."""

    def __init__(
        self,
        name: str,
        *,
        fail_with: BackendError | None = None,
        fail_after: int = 0,
        fail_calls: Sequence[int] | None = None,
    ) -> None:
        self.name = name
        self.fail_with = fail_with
        self.fail_after = fail_after
        self.fail_calls = fail_calls
        self.requests: list[ChatRequest] = []
        self.closed = 0
        self.open_streams = 0

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        return self._stream(request)

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        call = len(self.requests)
        self.requests.append(request)
        self.open_streams += 1
        try:
            done = "".join(ANSWER)
            rest = done[len(request.continue_from) :] if request.continue_from else done
            pieces = _split(rest)
            failing = self.fail_with is not None and (
                self.fail_calls is None or call in self.fail_calls
            )
            for i, piece in enumerate(pieces):
                if failing and i == self.fail_after:
                    assert self.fail_with is not None
                    raise self.fail_with
                yield TextDelta(piece, tokens=1)  # one token per piece, as the fake says
            yield Final("stop", Usage(3, len(pieces)), self.name, f"{self.name}-model")
        finally:
            self.open_streams -= 1
            self.closed += 1

    async def health(self) -> Health:
        return Health(ok=True)

    def capabilities(self) -> Capabilities:
        return Capabilities(model=f"{self.name}-model", context_window=4096)


def _split(text: str) -> list[str]:
    out, word = [], ""
    for ch in text:
        word += ch
        if ch == " ":
            out.append(word)
            word = ""
    return [*out, word] if word else out


def _request(text: str = "What is the capital of France?", **fields: Any) -> ChatRequest:
    return ChatRequest((Message("user", text),), **fields)


async def _with_routes(
    stream: AsyncGenerator[StreamEvent, None], routes: list[Route]
) -> AsyncGenerator[StreamEvent, None]:
    """`stream` with its `Routed` events appended to `routes` (and still passed on)."""
    async for event in stream:
        if isinstance(event, Routed):
            routes.append(event.route)
        yield event


CLOUD_FIRST = RouterSettings(mode="cloud-preferred")


async def test_cloud_failing_before_its_first_token_runs_on_the_device_at_once() -> None:
    local, cloud = Scripted("local"), Scripted("cloud", fail_with=Unavailable("refused"))
    text, final = await collect(HybridBackend(local, cloud, CLOUD_FIRST).stream(_request()))
    assert text == "".join(ANSWER)
    assert final.backend == "local" and final.route is not None
    assert final.route.rule == "mode"
    assert final.route.failover == (
        "answered on this device: the cloud failed before answering (refused)"
    )
    assert local.requests[0].continue_from == ""


async def test_cloud_failing_mid_stream_is_continued_on_the_device_without_loss() -> None:
    local = Scripted("local")
    cloud = Scripted("cloud", fail_with=Unavailable("connection lost"), fail_after=3)
    routes: list[Route] = []
    hybrid = HybridBackend(local, cloud, CLOUD_FIRST)
    text, final = await collect(_with_routes(hybrid.stream(_request()), routes))
    assert text == "".join(ANSWER)  # nothing lost, nothing repeated
    assert local.requests[0].continue_from == "The capital of "
    assert local.requests[0].sampling.max_tokens == 512 - 3  # the rest of the budget
    assert final.route is not None
    assert final.route.backend == "local"
    assert final.route.failover == "continued on this device: cloud connection lost"
    assert [r.backend for r in routes] == ["cloud", "local"]


async def test_device_failure_moves_to_the_cloud_when_allowed() -> None:
    local = Scripted("local", fail_with=ModelError("out of memory"), fail_after=2)
    cloud = Scripted("cloud")
    text, final = await collect(HybridBackend(local, cloud).stream(_request()))
    assert text == "".join(ANSWER)
    assert cloud.requests[0].continue_from == "The capital "
    assert final.route is not None and final.route.backend == "cloud"
    assert final.route.failover == "continued in the cloud: this device failed (out of memory)"


@pytest.mark.parametrize(
    ("settings", "text"),
    [
        (RouterSettings(), "my email is jane@fastmail.com"),
        (RouterSettings(mode="local-only"), "What is the capital of France?"),
        (RouterSettings(), "/local What is the capital of France?"),
    ],
)
async def test_device_failure_never_moves_a_private_or_local_only_request(
    settings: RouterSettings, text: str
) -> None:
    local = Scripted("local", fail_with=ModelError("out of memory"))
    cloud = Scripted("cloud")
    with pytest.raises(ModelError, match="out of memory"):
        await collect(HybridBackend(local, cloud, settings).stream(_request(text)))
    assert cloud.requests == []


async def test_both_failing_is_one_clear_error_and_the_partial_text_is_kept() -> None:
    local = Scripted("local", fail_with=ModelError("out of memory"), fail_after=1)
    cloud = Scripted("cloud", fail_with=Unavailable("connection lost"), fail_after=2)
    received: list[str] = []
    with pytest.raises(BothFailed) as info:
        async for event in HybridBackend(local, cloud, CLOUD_FIRST).stream(_request()):
            if isinstance(event, TextDelta):
                received.append(event.text)
    assert str(info.value) == (
        "Both sides failed: the cloud: connection lost; this device: out of memory. "
        "The text so far is kept; try again."
    )
    assert info.value.partial_text == "".join(received) == "The capital of "
    assert isinstance(info.value, Unavailable)


async def test_at_most_one_switch_per_answer() -> None:
    local = Scripted("local", fail_with=ModelError("bad weights"))
    cloud = Scripted("cloud", fail_with=Unavailable("down"))
    with pytest.raises(BothFailed):
        await collect(HybridBackend(local, cloud, CLOUD_FIRST).stream(_request()))
    assert (len(cloud.requests), len(local.requests)) == (1, 1)


async def test_closing_the_hybrid_stream_closes_the_inner_stream() -> None:
    local, cloud = Scripted("local"), Scripted("cloud")
    hybrid = HybridBackend(local, cloud, CLOUD_FIRST)
    async with aclosing(hybrid.stream(_request())) as stream:
        async for event in stream:
            if isinstance(event, Routed):
                continue  # where it goes comes first, before the cloud is asked
            assert isinstance(event, TextDelta)
            assert cloud.open_streams == 1
            break
    assert cloud.open_streams == 0 and cloud.closed == 1
    assert hybrid.breakers["cloud"].allows()


async def test_the_override_prefix_is_stripped_before_sending() -> None:
    local, cloud = Scripted("local"), Scripted("cloud")
    _, final = await collect(HybridBackend(local, cloud).stream(_request("/cloud  hello there")))
    assert cloud.requests[0].messages[-1].content == "hello there"
    assert final.route is not None and final.route.rule == "override"


async def test_pin_is_per_call() -> None:
    local, cloud = Scripted("local"), Scripted("cloud")
    hybrid = HybridBackend(local, cloud)
    _, final = await collect(hybrid.stream(_request(pin="cloud")))
    assert final.route is not None and (final.route.backend, final.route.rule) == ("cloud", "pin")
    _, final = await collect(hybrid.stream(_request()))
    assert final.route is not None and final.route.backend == "local"


async def test_unauthorized_sends_the_next_requests_to_the_device_with_the_reason() -> None:
    local, cloud = Scripted("local"), Scripted("cloud", fail_with=Unauthorized("key refused"))
    hybrid = HybridBackend(local, cloud, CLOUD_FIRST)
    await collect(hybrid.stream(_request()))
    _, final = await collect(hybrid.stream(_request()))
    assert len(cloud.requests) == 1
    assert final.route is not None
    assert (final.route.backend, final.route.rule, final.route.reason) == (
        "local",
        "health",
        "the cloud refused the API key → on this device",
    )


async def test_a_429_sends_requests_to_the_device_until_retry_after_passes() -> None:
    now = [0.0]
    local = Scripted("local")
    cloud = Scripted("cloud", fail_with=Overloaded("busy", retry_after=20), fail_calls=[0])
    hybrid = HybridBackend(local, cloud, CLOUD_FIRST, clock=lambda: now[0])
    _, final = await collect(hybrid.stream(_request()))
    assert final.route is not None and final.route.backend == "local"
    now[0] = 19.0
    _, final = await collect(hybrid.stream(_request()))
    assert final.route is not None
    assert (final.route.backend, final.route.rule) == ("local", "cloud-busy")
    assert final.route.reason == "the cloud is busy (try again in 1 s) → on this device"
    now[0] = 20.5
    _, final = await collect(hybrid.stream(_request()))
    assert final.route is not None and final.route.backend == "cloud"


async def test_the_breaker_keeps_the_chat_from_flapping_under_alternating_failures() -> None:
    """The cloud fails every other request: each failure falls back to the device, but the
    circuit never opens, so routing stays stable (cloud, by mode) instead of flipping."""
    local = Scripted("local")
    cloud = Scripted("cloud", fail_with=Unavailable("flaky"), fail_calls=range(0, 40, 2))
    hybrid = HybridBackend(
        local, cloud, RouterSettings(mode="cloud-preferred", breaker=BreakerSettings())
    )
    rules = set()
    for _ in range(20):
        text, final = await collect(hybrid.stream(_request()))
        assert text == "".join(ANSWER)
        assert final.route is not None
        rules.add(final.route.rule)
    assert rules == {"mode"}
    assert len(cloud.requests) == 20


async def test_repeated_device_failures_open_its_circuit() -> None:
    local = Scripted("local", fail_with=ModelError("bad weights"))
    cloud = Scripted("cloud")
    hybrid = HybridBackend(
        local, cloud, RouterSettings(breaker=BreakerSettings(failure_threshold=2))
    )
    for _ in range(2):
        await collect(hybrid.stream(_request()))
    _, final = await collect(hybrid.stream(_request()))
    assert len(local.requests) == 2
    assert final.route is not None
    assert (final.route.backend, final.route.rule) == ("cloud", "health")
    assert final.route.reason == "this device's engine is failing (bad weights) → cloud"


async def test_requests_in_flight_on_the_device_overflow_to_the_cloud() -> None:
    local, cloud = Scripted("local"), Scripted("cloud")
    hybrid = HybridBackend(local, cloud, RouterSettings(max_local_inflight=2))
    streams = [hybrid.stream(_request()) for _ in range(3)]
    firsts = [await anext(s) for s in streams]
    # Each says where it goes before its first token; the third sees two in progress.
    assert [e.route.backend for e in firsts if isinstance(e, Routed)] == ["local", "local", "cloud"]
    finals = []
    for s in streams:
        _, final = await collect(s)
        finals.append(final)
    routes = [f.route for f in finals]
    assert [r.backend for r in routes if r] == ["local", "local", "cloud"]
    last = routes[2]
    assert last is not None and last.reason == "this device is busy (2 answers in progress) → cloud"


async def test_no_cloud_is_a_readable_reason() -> None:
    local = Scripted("local")
    hybrid = HybridBackend(local, None, CLOUD_FIRST, cloud_missing="no cloud API key")
    _, final = await collect(hybrid.stream(_request()))
    assert final.route is not None
    assert final.route.reason == "no cloud API key → on this device"


async def test_every_final_carries_a_route() -> None:
    local, cloud = Scripted("local"), Scripted("cloud")
    hybrid = HybridBackend(local, cloud)
    async for event in hybrid.stream(_request()):
        if isinstance(event, Final):
            assert event.route is not None and event.route.reason


async def test_a_device_answer_holding_private_data_is_not_continued_in_the_cloud() -> None:
    class Leaky(Scripted):
        """Injects a fault after streaming a phone number (the device's own words)."""

        async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
            self.requests.append(request)
            yield TextDelta("Call 555-123-4567 ")
            raise ModelError("out of memory")

    local, cloud = Leaky("local"), Scripted("cloud")
    with pytest.raises(ModelError):
        await collect(HybridBackend(local, cloud).stream(_request()))
    assert cloud.requests == []


class Chunky:
    """Injects a cloud that sends several tokens per piece (speculative decoding) and then
    loses the connection: `pieces` of (text, tokens)."""

    name = "cloud"

    def __init__(self, pieces: list[tuple[str, int | None]]) -> None:
        self.pieces = pieces

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        for text, tokens in self.pieces:
            yield TextDelta(text, tokens=tokens)
        raise Unavailable("connection lost", backend="cloud")

    async def health(self) -> Health:
        return Health(ok=True)

    def capabilities(self) -> Capabilities:
        return Capabilities(model="cloud-model", context_window=4096)


def _budgeted(max_tokens: int) -> ChatRequest:
    return ChatRequest((Message("user", "What is the capital of France?"),),
                       Sampling(max_tokens=max_tokens))


async def test_a_continued_answer_gets_the_budget_left_in_tokens_not_in_pieces() -> None:
    local = Scripted("local")
    cloud = Chunky([("The capital ", 4), ("of France ", 4)])
    hybrid = HybridBackend(local, cloud, CLOUD_FIRST)  # type: ignore[arg-type]
    await collect(hybrid.stream(_budgeted(20)))
    assert local.requests[0].sampling.max_tokens == 20 - 8  # not 20 - 2 pieces


async def test_pieces_of_unknown_size_count_as_many_tokens_as_they_have_bytes() -> None:
    local = Scripted("local")
    hybrid = HybridBackend(local, Chunky([("Paris é", None)]), CLOUD_FIRST)  # type: ignore[arg-type]
    await collect(hybrid.stream(_budgeted(20)))
    assert local.requests[0].sampling.max_tokens == 20 - len("Paris é".encode())


async def test_when_the_budget_is_spent_the_answer_ends_without_the_other_side() -> None:
    local = Scripted("local")
    hybrid = HybridBackend(local, Chunky([("The capital of ", 6)]), CLOUD_FIRST)  # type: ignore[arg-type]
    text, final = await collect(hybrid.stream(_budgeted(6)))
    assert text == "The capital of " and final.finish_reason == "length"
    assert final.usage.completion_tokens == 6 and local.requests == []
