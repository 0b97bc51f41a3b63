"""Invariants of the backend contract (router/protocol.py).

The streams here are small generators written in the test: they are the subject (what the
contract checker accepts and refuses), not stand-ins for an engine.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator

import pytest

from router.protocol import (
    BackendError,
    ChatRequest,
    ContextTooLong,
    Final,
    Message,
    ModelError,
    Overloaded,
    ProtocolViolation,
    Sampling,
    StreamEvent,
    TextDelta,
    Unauthorized,
    Unavailable,
    Usage,
    checked,
    collect,
)

FINAL = Final("stop", Usage(prompt_tokens=3, completion_tokens=2), backend="test", model="m")


async def _stream(*events: StreamEvent) -> AsyncGenerator[StreamEvent, None]:
    for event in events:
        yield event


async def test_a_stream_is_deltas_then_exactly_one_final() -> None:
    text, final = await collect(_stream(TextDelta("Hel"), TextDelta("lo"), FINAL))
    assert text == "Hello"
    assert final is FINAL


async def test_a_stream_without_final_is_a_violation() -> None:
    with pytest.raises(ProtocolViolation, match="without a final"):
        await collect(_stream(TextDelta("Hi")))


async def test_an_event_after_the_final_is_a_violation() -> None:
    with pytest.raises(ProtocolViolation, match="after the final"):
        await collect(_stream(FINAL, TextDelta("late")))


async def test_two_finals_are_a_violation() -> None:
    with pytest.raises(ProtocolViolation):
        await collect(_stream(FINAL, FINAL))


async def test_an_empty_delta_is_a_violation() -> None:
    with pytest.raises(ProtocolViolation, match="empty"):
        await collect(_stream(TextDelta(""), FINAL))


async def test_closing_early_is_allowed_and_reaches_the_backend() -> None:
    closed: list[bool] = []

    async def backend_stream() -> AsyncGenerator[StreamEvent, None]:
        try:
            for i in range(100):
                yield TextDelta(str(i))
            yield FINAL
        finally:
            closed.append(True)  # a backend frees its slot here

    stream = checked(backend_stream())
    first = await anext(stream)
    assert first == TextDelta("0")
    await stream.aclose()
    assert closed == [True]


async def test_a_typed_error_mid_stream_keeps_what_came_before() -> None:
    received: list[str] = []

    async def failing() -> AsyncGenerator[StreamEvent, None]:
        yield TextDelta("partial ")
        raise Unavailable("connection lost", backend="cloud")

    with pytest.raises(Unavailable) as info:
        async for event in checked(failing()):
            if isinstance(event, TextDelta):
                received.append(event.text)
    assert received == ["partial "]
    assert info.value.backend == "cloud"


def test_every_error_is_a_backend_error_with_its_details() -> None:
    overloaded = Overloaded("busy", retry_after=2.5)
    too_long = ContextTooLong("too long", prompt_tokens=5000, context_window=4096)
    for error in (Unavailable("x"), Unauthorized("x"), overloaded, too_long, ModelError("x")):
        assert isinstance(error, BackendError)
    assert overloaded.retry_after == 2.5
    assert (too_long.prompt_tokens, too_long.context_window) == (5000, 4096)


def test_requests_are_checked_when_made() -> None:
    with pytest.raises(ValueError, match="at least one message"):
        ChatRequest(messages=())
    with pytest.raises(ValueError, match="continue_from"):
        ChatRequest(messages=(Message("user", "hi"), Message("assistant", "hel")))
    with pytest.raises(ValueError, match="unknown role"):
        Message("robot", "hi")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Sampling(max_tokens=0)
    with pytest.raises(ValueError):
        Sampling(top_p=0)
    with pytest.raises(ValueError):
        Sampling(stop=("",))


def test_each_request_gets_its_own_id() -> None:
    messages = (Message("user", "hi"),)
    assert ChatRequest(messages).request_id != ChatRequest(messages).request_id


async def test_a_route_may_come_before_the_first_delta_and_again_only_as_a_failover() -> None:
    from router.protocol import Route, Routed

    first = Routed(Route("cloud", "complexity", "hard question → cloud"))
    moved = Routed(Route("local", "complexity", "hard", failover="continued on this device"))
    text, final = await collect(_stream(first, TextDelta("Hel"), moved, TextDelta("lo"), FINAL))
    assert (text, final) == ("Hello", FINAL)  # collect() skips routes
    with pytest.raises(ProtocolViolation, match="no failover"):
        await collect(_stream(first, TextDelta("Hel"), first, FINAL))
    with pytest.raises(ProtocolViolation, match="after the final"):
        await collect(_stream(FINAL, first))


def test_the_pin_and_the_local_only_promise_travel_in_the_request() -> None:
    from router.protocol import InvalidRequest

    messages = (Message("user", "hi"),)
    assert ChatRequest(messages, pin="cloud").pin == "cloud"
    assert ChatRequest(messages, local_only=True, pin="local").local_only
    with pytest.raises(InvalidRequest, match="local-only"):
        ChatRequest(messages, local_only=True, pin="cloud")
    with pytest.raises(InvalidRequest, match="pin"):
        ChatRequest(messages, pin="moon")  # type: ignore[arg-type]


def test_a_delta_may_say_how_many_tokens_it_holds() -> None:
    assert TextDelta("abc").tokens is None  # unknown unless the backend says
    assert TextDelta("abc", tokens=3).tokens == 3


def test_every_error_of_the_contract_hangs_from_tandem_error() -> None:
    from router.protocol import InvalidRequest, TandemError

    for cls in (BackendError, ProtocolViolation, InvalidRequest):
        assert issubclass(cls, TandemError)
    assert issubclass(InvalidRequest, ValueError)  # `except ValueError` still catches it
