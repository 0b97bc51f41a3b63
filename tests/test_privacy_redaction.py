"""Redaction (`privacy_action = "redact"`): placeholders out, real values back in.

The pure parts directly; the hybrid backend with `Echo`, a cloud stand-in that answers with
the placeholders it received (the real gateway and vLLM round trip is in
tests/test_privacy_gateway.py: a tiny test model does not reliably repeat a placeholder)."""

from __future__ import annotations

from collections.abc import AsyncGenerator

import pytest

from router.hybrid import HybridBackend
from router.policy import RouterSettings, RoutingInput, RoutingPolicy
from router.privacy import PrivacyScanner
from router.protocol import (
    Capabilities,
    ChatRequest,
    Final,
    Health,
    Message,
    ModelError,
    Sampling,
    StreamEvent,
    TextDelta,
    Usage,
    collect,
)
from router.redaction import Restorer, redact

CARD = "4111 1111 1111 1111"
EMAIL = "jane.doe@fastmail.com"
TEXT = f"My card {CARD} was charged twice. Write to {EMAIL} for me."


def test_each_value_gets_one_placeholder_across_the_conversation() -> None:
    request = ChatRequest(
        (
            Message("system", f"The user is {EMAIL}."),
            Message("user", TEXT),
            Message("assistant", "Sure."),
            Message("user", f"Again: card {CARD}."),
        ),
        continue_from=f"Dear {EMAIL},",
    )
    r = redact(request, PrivacyScanner())
    sent = [m.content for m in r.request.messages] + [r.request.continue_from]
    assert sent == [
        "The user is [EMAIL_1].",
        "My card [CARD_1] was charged twice. Write to [EMAIL_1] for me.",
        "Sure.",
        "Again: card [CARD_1].",
        "Dear [EMAIL_1],",
    ]
    assert r.values == {"[EMAIL_1]": EMAIL, "[CARD_1]": CARD}
    assert r.summary() == "2 items redacted: email address, payment card number"
    assert PrivacyScanner().scan_request(r.request) == []


def test_values_come_back_even_when_a_placeholder_is_cut_across_deltas() -> None:
    restorer = Restorer({"[EMAIL_1]": EMAIL, "[CARD_1]": CARD})
    pieces = ["Dear [EM", "AIL", "_1], the card [", "CARD_1] ", "[NOTE_2] [x"]
    out = "".join(restorer.feed(p) for p in pieces) + restorer.flush()
    assert out == f"Dear {EMAIL}, the card {CARD} [NOTE_2] [x"
    assert (restorer.restored, restorer.mangled) == (2, 0)


def test_a_placeholder_the_cloud_changed_is_left_visible_and_marked() -> None:
    restorer = Restorer({"[EMAIL_1]": EMAIL})
    out = restorer.feed("to [Email_1], [EMAIL 1] and [EMAIL_2].") + restorer.flush()
    assert out == "to ⟦[Email_1]⟧, ⟦[EMAIL 1]⟧ and ⟦[EMAIL_2]⟧."
    assert restorer.mangled == 3 and EMAIL not in out


def test_the_policy_redacts_instead_of_keeping_local() -> None:
    messages = (Message("user", TEXT),)
    keep = RoutingPolicy(RouterSettings(mode="cloud-preferred")).decide(
        RoutingInput(messages=messages, max_tokens=8)
    )
    assert (keep.side, keep.rule, keep.redact, keep.cloud_allowed) == (
        "local", "privacy", False, False
    )  # fmt: skip
    policy = RoutingPolicy(RouterSettings(mode="cloud-preferred", privacy_action="redact"))
    d = policy.decide(RoutingInput(messages=messages, max_tokens=8))
    assert (d.side, d.rule, d.redact) == ("cloud", "mode", True)
    assert {f.kind for f in d.findings} == {"card", "email"}
    # Nothing pushes it to the cloud: it stays on the device, and may fail over redacted.
    d = RoutingPolicy(RouterSettings(privacy_action="redact")).decide(
        RoutingInput(messages=messages, max_tokens=8)
    )
    assert (d.side, d.redact, d.cloud_allowed) == ("local", True, True)


def test_an_unknown_privacy_action_is_refused() -> None:
    with pytest.raises(ValueError, match="privacy_action must be one of keep-local, redact"):
        RouterSettings(privacy_action="send")


class Echo:
    """A cloud stand-in: records the request and answers with the placeholders it got."""

    name = "cloud"

    def __init__(self) -> None:
        self.requests: list[ChatRequest] = []

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        return self._stream(request)

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        self.requests.append(request)
        sent = request.messages[-1].content
        words = ["Dear ", "[EMA", "IL_1], ", "your card ", "[CARD_1]", " and [CARD_9]."]
        assert "[EMAIL_1]" in sent and "[CARD_1]" in sent
        for w in words:
            yield TextDelta(w, tokens=1)
        yield Final("stop", Usage(1, len(words)), self.name, "m")

    async def health(self) -> Health:
        return Health(ok=True)

    def capabilities(self) -> Capabilities:
        return Capabilities(model="m", context_window=4096)


class Failing(Echo):
    """The device as a fault injector: says a card number, then fails."""

    name = "local"

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        self.requests.append(request)
        yield TextDelta(f"About {CARD}: ", tokens=1)
        raise ModelError("out of memory")


async def test_the_hybrid_sends_placeholders_and_shows_the_real_values() -> None:
    cloud = Echo()
    hybrid = HybridBackend(
        Failing(), cloud, RouterSettings(mode="cloud-preferred", privacy_action="redact")
    )
    answer, final = await collect(
        hybrid.stream(ChatRequest((Message("user", TEXT),), Sampling(max_tokens=20)))
    )
    assert answer == f"Dear {EMAIL}, your card {CARD} and ⟦[CARD_9]⟧."
    [sent] = cloud.requests
    assert CARD not in repr(sent) and EMAIL not in repr(sent)
    assert final.route is not None
    assert "2 items redacted: payment card number, email address" in final.route.reason
    assert "1 placeholder(s) the cloud changed are marked" in final.route.reason


async def test_a_device_failover_continues_in_the_cloud_redacted() -> None:
    class Continues(Echo):
        async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
            self.requests.append(request)
            yield TextDelta("it is [CARD_1].", tokens=1)
            yield Final("stop", Usage(1, 1), self.name, "m")

    cloud = Continues()
    hybrid = HybridBackend(Failing(), cloud, RouterSettings(privacy_action="redact"))
    answer, final = await collect(
        hybrid.stream(ChatRequest((Message("user", f"card {CARD}?"),), Sampling(max_tokens=9)))
    )
    assert answer == f"About {CARD}: it is {CARD}."
    [sent] = cloud.requests
    assert sent.continue_from == "About [CARD_1]: " and CARD not in repr(sent)
    assert final.route is not None and final.route.failover


def test_a_placeholder_the_user_wrote_is_not_reused() -> None:
    request = ChatRequest((Message("user", f"fill [CARD_1] with my card {CARD}"),))
    r = redact(request, PrivacyScanner())
    assert r.request.messages[0].content == "fill [CARD_1] with my card [CARD_2]"
    assert r.values == {"[CARD_2]": CARD}


async def test_a_tool_call_written_with_placeholders_gets_the_real_values() -> None:
    from router.protocol import ToolCall

    class Calls(Echo):
        async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
            self.requests.append(request)
            yield ToolCall("c1", "send_mail", '{"to": "[EMAIL_1]"}')
            yield Final("tool_calls", Usage(1, 1), self.name, "m")

    hybrid = HybridBackend(
        Failing(), Calls(), RouterSettings(mode="cloud-preferred", privacy_action="redact")
    )
    calls = [e async for e in hybrid.stream(ChatRequest((Message("user", TEXT),)))
             if isinstance(e, ToolCall)]  # fmt: skip
    assert [c.arguments for c in calls] == [f'{{"to": "{EMAIL}"}}']
