"""The one backend the chat and `tandem serve` see: picks the device or the cloud per request
(router.policy), and fails over without losing text.

- the cloud fails before its first token → the same request runs on the device at once;
- the cloud fails mid-stream → the text already streamed stays, and the device continues the
  answer from where it stopped (`ChatRequest.continue_from`); the record says so;
- the device fails → the cloud, if the hard rules allow (never for a private request, never in
  local-only mode, never against a `/local` override or a pin to the device, and not when the
  device's partial answer, which would be sent along, holds something the scanner flags);
- at most one switch per answer; if both sides fail, `BothFailed` (the consumer keeps the text
  it already received).

A thinking answer that fails while still in its reasoning starts over on the other side (the
reasoning is the model's own scratch: the other side's would not follow from it); the
failover `Route` says `restarted` so the consumer drops what it showed. Once the answer text
has begun, the other side continues it with the finished reasoning
(`ChatRequest.continue_reasoning`). An answer whose tool calls are all out when it fails ends
there ("tool_calls"). Tool results are scanned for private data like any message, and so are
the tool calls' arguments and the reasoning of earlier turns. A `/think` or `/no_think`
prefix (Qwen3's soft switches) sets `ChatRequest.think` and is stripped. The final route
says how long the answer thought (`Route.thinking_s`).

Before the first delta it yields `Routed` (router.protocol) with the route: backend, rule,
reason, scores; and another `Routed`, with `failover` set, when the answer moves. Every `Final`
it yields carries the route as it ended. A continued answer gets what is left of max_tokens,
counted in tokens (`TextDelta.tokens`), not in pieces.

It owns the two sides it was given: `start()` starts both (the device's model loads; the
cloud needs nothing), `aclose()` closes both.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import replace

from router.complexity import ComplexityScorer
from router.health import CircuitBreaker
from router.latency import FirstTokenTimes
from router.policy import (
    Decision,
    RouterSettings,
    RoutingInput,
    RoutingPolicy,
    Side,
    parse_override,
)
from router.privacy import PrivacyGuarded, PrivacyRefused
from router.protocol import (
    BackendError,
    Capabilities,
    ChatRequest,
    Final,
    Health,
    Message,
    ReasoningDelta,
    Route,
    Routed,
    Service,
    StreamEvent,
    TextDelta,
    ToolCall,
    Unavailable,
    Usage,
)
from router.reasoning import ThinkingClock, parse_think_switch
from router.redaction import Redaction, redact

__all__ = ["BothFailed", "HybridBackend"]


class BothFailed(Unavailable):
    """The answer failed on one side, then on the other. The text streamed so far is in
    `partial_text` (the consumer already has it too)."""

    def __init__(
        self, message: str, *, first: BackendError, second: BackendError, partial_text: str
    ) -> None:
        super().__init__(message, backend="hybrid")
        self.first = first
        self.second = second
        self.partial_text = partial_text


_SIDE_NAMES = {"local": "this device", "cloud": "the cloud"}


def _cause(error: BackendError) -> str:
    return str(error).rstrip(".") or type(error).__name__


class HybridBackend:
    """Device plus cloud as one backend (implements router.protocol.Backend)."""

    name = "hybrid"

    def __init__(
        self,
        local: Service,
        cloud: Service | None,
        policy: RoutingPolicy | RouterSettings | None = None,
        *,
        scorer: ComplexityScorer | None = None,
        cloud_missing: str = "no cloud configured",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`policy`: a RoutingPolicy, or RouterSettings to build one from (with `scorer`), or
        None for the defaults. `cloud` None means no cloud: `cloud_missing` is the reason shown
        (e.g. "no cloud API key"). Raises router.privacy.PrivacyConfigError (a ValueError) for
        an invalid privacy pattern."""
        self.local = local
        self.cloud = cloud
        self.cloud_missing = cloud_missing
        if not isinstance(policy, RoutingPolicy):
            policy = RoutingPolicy(policy, scorer)
        self.policy = policy
        self._share_scanner()
        breaker = self.policy.settings.breaker
        self.breakers: dict[Side, CircuitBreaker] = {
            "local": CircuitBreaker("this device's engine", breaker, clock=clock),
            "cloud": CircuitBreaker("the cloud", breaker, clock=clock),
        }
        self._local_inflight = 0
        self._cloud_inflight = 0
        self.first_tokens = FirstTokenTimes(clock=clock)
        """Recent time to first token per side, which the overflow rule weighs."""

    @property
    def settings(self) -> RouterSettings:
        return self.policy.settings

    def configure(self, settings: RouterSettings) -> None:
        """New settings (mode, privacy terms, threshold...) from the next request on."""
        self.policy = RoutingPolicy(settings, self.policy.scorer)
        self._share_scanner()

    def _share_scanner(self) -> None:
        # The cloud client's last check looks for the same terms and patterns as the router.
        if isinstance(self.cloud, PrivacyGuarded):
            self.cloud.scanner = self.policy.scanner

    # --- deciding -------------------------------------------------------------------------

    def prepare(self, request: ChatRequest) -> tuple[Decision, ChatRequest]:
        """Decide where `request` would run, without running it. Returns the decision and the
        request as it would be sent (a `/local` or `/cloud` prefix stripped)."""
        # `/think` / `/no_think` before or after a `/local` / `/cloud` prefix.
        override, sent = _strip_override(_strip_think_switch(request))
        sent = _strip_think_switch(sent)
        try:
            local_caps: Capabilities | None = self.local.capabilities()
        except BackendError:
            local_caps = None
        cloud_breaker, local_breaker = self.breakers["cloud"], self.breakers["local"]
        inp = RoutingInput(
            messages=_scanned(sent.messages),
            max_tokens=sent.sampling.max_tokens,
            continue_from=sent.continue_from,
            override=override,
            pin=sent.pin,
            local_only=sent.local_only,
            cloud_missing=self.cloud_missing if self.cloud is None else None,
            cloud_blocked="" if cloud_breaker.allows() else cloud_breaker.reason(),
            cloud_busy=cloud_breaker.busy_for() > 0,
            local_blocked="" if local_breaker.allows() else local_breaker.reason(),
            local=local_caps,
            local_inflight=self._local_inflight,
            cloud_inflight=self._cloud_inflight,
            local_ttft_s=self.first_tokens.recent("local"),
            cloud_ttft_s=self.first_tokens.recent("cloud"),
            other_texts=_other_texts(sent),
        )
        return self.policy.decide(inp), sent

    # --- running --------------------------------------------------------------------------

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """Stream the answer from the side the policy picks (weighing `request.pin` and
        `request.local_only`), failing over as described in the module docstring: a `Routed`
        first, then the deltas and the `Final`."""
        return self._stream(request)

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        decision, sent = self.prepare(request)
        started = time.perf_counter()
        first_token_at: float | None = None
        text: list[str] = []
        reasoning: list[str] = []
        calls: list[ToolCall] = []
        thinking = ThinkingClock()
        tokens = 0  # completion tokens streamed so far (an upper bound where unknown)
        side: Side = decision.side
        route = decision.route(self._backend(side).name)
        first_error: BackendError | None = None
        attempt = sent
        while True:
            backend, breaker = self._backend(side), self.breakers[side]
            breaker.begin()
            settled = False
            on_device = side == "local"
            # What the overflow rule weighs: each side's first-token time per answer it had
            # in progress (router.latency), counted from the decision on.
            ahead = self._local_inflight if on_device else self._cloud_inflight
            attempt_started, attempt_answered = time.perf_counter(), False
            if on_device:
                self._local_inflight += 1
            else:
                self._cloud_inflight += 1
            redaction: Redaction | None = None
            if side == "cloud" and decision.redact:
                # Placeholders out; the real values go back in below, before anyone sees them.
                redaction = redact(attempt, self.policy.scanner)
                route = replace(route, reason=f"{route.reason}; {redaction.summary()}")
            try:
                yield Routed(route)
                outgoing = backend.stream(attempt if redaction is None else redaction.request)
                if redaction is not None:
                    outgoing = _restoring(outgoing, redaction)
                async with aclosing(outgoing) as inner:
                    async for event in inner:
                        if isinstance(event, ToolCall):
                            thinking.stop()
                            calls.append(event)
                            yield event
                        elif isinstance(event, (TextDelta, ReasoningDelta)):
                            if first_token_at is None:
                                first_token_at = time.perf_counter()
                            if not attempt_answered:
                                self.first_tokens.record(
                                    side, time.perf_counter() - attempt_started, ahead
                                )
                            attempt_answered = True
                            if isinstance(event, ReasoningDelta):
                                thinking.start()
                                reasoning.append(event.text)
                            else:
                                thinking.stop()
                                text.append(event.text)
                            tokens += _token_count(event)
                            yield event
                        elif isinstance(event, Final):
                            settled = True
                            breaker.record_success()
                            if redaction is not None and redaction.mangled:
                                route = replace(
                                    route,
                                    reason=f"{route.reason}; {redaction.mangled} placeholder(s) "
                                    "the cloud changed are marked ⟦…⟧",
                                )
                            thinking.stop()
                            route = replace(route, thinking_s=thinking.seconds)
                            yield self._final(event, route, started, first_token_at)
                            return
                raise Unavailable(
                    f"{backend.name} ended the answer without a final record", backend=backend.name
                )
            except BackendError as exc:
                settled = True
                if isinstance(exc, PrivacyRefused):
                    breaker.abandon()  # the cloud is fine; the request was not for it
                else:
                    breaker.record_failure(exc)
                so_far, thought = "".join(text), "".join(reasoning)
                if calls:
                    # The calls are whole and out: the answer is complete, only its end lost.
                    thinking.stop()
                    end = Final("tool_calls", Usage(0, tokens), backend.name, model="")
                    route = replace(route, thinking_s=thinking.seconds)
                    yield self._final(end, route, started, first_token_at)
                    return
                if first_error is not None:
                    raise BothFailed(
                        f"Both sides failed: {_SIDE_NAMES[_other(side)]}: {_cause(first_error)}; "
                        f"{_SIDE_NAMES[side]}: {_cause(exc)}. The text so far is kept; try again.",
                        first=first_error,
                        second=exc,
                        partial_text=so_far,
                    ) from exc
                # The device's partial answer (and its reasoning) would be sent along, joined
                # to the text it continues: scan them as the one text the cloud would get.
                target = self._failover_target(
                    side, decision, sent.continue_from + so_far + "\n" + thought
                )
                if target is None:
                    raise
                first_error = exc
                restart = bool(thought) and not so_far
                failover = _failover_sentence(
                    side, exc, mid_stream=bool(so_far), restarted=restart
                )
                if restart:
                    # Still thinking: start over there, with the whole token budget.
                    attempt, reasoning, tokens, thinking = sent, [], 0, ThinkingClock()
                elif so_far:
                    # The other side continues the text with what is left of the token budget.
                    left = sent.sampling.max_tokens - tokens
                    if left < 1:  # the budget is spent: the answer is whole, only its end lost
                        usage = Usage(prompt_tokens=0, completion_tokens=tokens)
                        end = Final("length", usage, backend.name, model="", route=route)
                        yield self._final(end, route, started, first_token_at)
                        return
                    attempt = replace(
                        sent,
                        continue_from=sent.continue_from + so_far,
                        continue_reasoning=sent.continue_reasoning or thought,
                        sampling=replace(sent.sampling, max_tokens=left),
                    )
                side = target
                route = replace(
                    decision.route(self._backend(side).name, failover), restarted=restart
                )
            finally:
                if not settled:
                    breaker.abandon()  # the consumer closed the stream: no verdict
                if on_device:
                    self._local_inflight -= 1
                else:
                    self._cloud_inflight -= 1

    def _backend(self, side: Side) -> Service:
        if side == "cloud":
            assert self.cloud is not None  # the policy never picks a cloud that is not there
            return self.cloud
        return self.local

    def _failover_target(self, failed: Side, decision: Decision, so_far: str) -> Side | None:
        if failed == "cloud":
            return "local"  # the device is always allowed, and it is the last resort
        cloud_ok = (
            self.cloud is not None
            # the device's partial answer would be sent too (redacted, with privacy_action redact)
            and (decision.redact or not self._private(so_far))
            and decision.cloud_allowed
            and self.settings.mode != "local-only"
            and self.breakers["cloud"].allows()
        )
        return "cloud" if cloud_ok else None

    def _private(self, text: str) -> bool:
        try:
            return bool(text) and bool(self.policy.scanner.scan_texts([text]))
        except Exception:  # a failing scanner fails safe
            return True

    @staticmethod
    def _final(event: Final, route: Route, started: float, first_token_at: float | None) -> Final:
        # Time to first token as the consumer saw it, across a failover.
        ttft = (first_token_at - started) if first_token_at is not None else event.usage.ttft_s
        return replace(event, route=route, usage=replace(event.usage, ttft_s=ttft))

    # --- the rest of the Backend protocol ---------------------------------------------------

    async def health(self) -> Health:
        """Healthy when the device is (the cloud is optional); the detail names both."""
        local = await self.local.health()
        parts = [f"device: {'ok' if local.ok else local.detail or 'failing'}"]
        if self.cloud is None:
            parts.append(f"cloud: {self.cloud_missing}")
        elif self.settings.mode == "local-only":
            parts.append("cloud: not used (local-only)")  # and not contacted
        else:
            cloud = await self.cloud.health()
            parts.append(f"cloud: {'ok' if cloud.ok else cloud.detail or 'failing'}")
        return Health(ok=local.ok, detail="; ".join(parts))

    def capabilities(self) -> Capabilities:
        """The device's capabilities (the cloud's window may be larger; the router handles
        that per request)."""
        return self.local.capabilities()

    # --- router.protocol.Lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Start the cloud side (cheap) and then the device (loads its model; raises its
        error when it cannot)."""
        if self.cloud is not None:
            await self.cloud.start()
        await self.local.start()

    @property
    def ready(self) -> bool:
        """The device is ready (the cloud needs no start)."""
        return self.local.ready

    async def aclose(self) -> None:
        """Close both backends (the hybrid owns what it was given)."""
        for backend in (self.local, self.cloud):
            if backend is not None:
                await backend.aclose()


def _other_texts(request: ChatRequest) -> tuple[tuple[str, str], ...]:
    """The fields besides the messages that the cloud would get, for the privacy rule."""
    parts: list[tuple[str, str]] = []
    if request.sampling.stop:
        parts.append(("stop strings", "\n".join(request.sampling.stop)))
    if request.adapter:
        parts.append(("adapter name", request.adapter))
    return tuple(parts)


def _scanned(messages: tuple[Message, ...]) -> tuple[Message, ...]:
    """The messages as the privacy scan reads them: an assistant turn's tool-call arguments
    and reasoning go over the wire too, so they count as its content here (tool results
    already are a `tool` message's content). Same number of messages: findings keep their
    message numbers."""
    out = []
    for m in messages:
        extra = [c.arguments for c in m.tool_calls] + ([m.reasoning] if m.reasoning else [])
        out.append(replace(m, content="\n".join([m.content, *extra])) if extra else m)
    return tuple(out)


def _token_count(delta: TextDelta | ReasoningDelta) -> int:
    """The tokens a delta stands for; when the backend does not say, its UTF-8 length (a
    token holds at least one byte of text): over-counting only ends a continuation early,
    under-counting would let it run past max_tokens."""
    if delta.tokens is not None:
        return delta.tokens
    return max(1, len(delta.text.encode("utf-8")))


async def _restoring(
    stream: AsyncGenerator[StreamEvent, None], redaction: Redaction
) -> AsyncGenerator[StreamEvent, None]:
    """The cloud's answer to a redacted request with the real values put back: text and
    reasoning alike; what a delta held back (a placeholder cut in two) comes out with the next
    one, at the end, or before a failure is raised, so the text so far stays whole."""
    text, thought = redaction.restorer(), redaction.restorer()
    held: dict[type, int] = {}

    def pending() -> list[StreamEvent]:
        out: list[StreamEvent] = []
        rest = thought.flush()
        if rest:
            out.append(ReasoningDelta(rest))
        rest = text.flush()
        if rest:
            out.append(TextDelta(rest))
        redaction.mangled = text.mangled + thought.mangled  # for the route, before the Final
        return out

    try:
        async with aclosing(stream) as inner:
            async for event in inner:
                if isinstance(event, (TextDelta, ReasoningDelta)):
                    restorer = text if isinstance(event, TextDelta) else thought
                    shown = restorer.feed(event.text)
                    if not shown:
                        if event.tokens:
                            held[type(event)] = held.get(type(event), 0) + event.tokens
                        continue
                    tokens = event.tokens
                    if tokens is not None and type(event) in held:
                        tokens += held.pop(type(event))
                    yield replace(event, text=shown, tokens=tokens)
                    continue
                if isinstance(event, (Final, ToolCall)):
                    for piece in pending():
                        yield piece
                if isinstance(event, ToolCall):
                    # A call the cloud wrote with placeholders runs here with the real values.
                    args = redaction.restorer()
                    event = replace(event, arguments=args.feed(event.arguments) + args.flush())
                    text.mangled += args.mangled
                yield event
    except BackendError:
        for piece in pending():
            yield piece
        raise
    finally:
        redaction.mangled = text.mangled + thought.mangled


def _other(side: Side) -> Side:
    return "cloud" if side == "local" else "local"


def _failover_sentence(
    failed: Side, error: BackendError, *, mid_stream: bool, restarted: bool = False
) -> str:
    if restarted:
        where = "on this device" if failed == "cloud" else "in the cloud"
        failing = "the cloud" if failed == "cloud" else "this device"
        return f"started over {where}: {failing} failed while thinking ({_cause(error)})"
    if failed == "cloud":
        if mid_stream:
            what = "cloud connection lost" if isinstance(error, Unavailable) else _cause(error)
            return f"continued on this device: {what}"
        return f"answered on this device: the cloud failed before answering ({_cause(error)})"
    if mid_stream:
        return f"continued in the cloud: this device failed ({_cause(error)})"
    return f"answered in the cloud: this device failed before answering ({_cause(error)})"


def _strip_think_switch(request: ChatRequest) -> ChatRequest:
    """A `/think` or `/no_think` prefix on the last user message sets `think` (and goes)."""
    for i in range(len(request.messages) - 1, -1, -1):
        message = request.messages[i]
        if message.role == "user":
            think, text = parse_think_switch(message.content)
            if think is None:
                return request
            messages = list(request.messages)
            messages[i] = replace(message, content=text)
            return replace(request, messages=tuple(messages), think=think)
    return request


def _strip_override(request: ChatRequest) -> tuple[Side | None, ChatRequest]:
    for i in range(len(request.messages) - 1, -1, -1):
        message = request.messages[i]
        if message.role == "user":
            override, text = parse_override(message.content)
            if override is None:
                return None, request
            messages = list(request.messages)
            messages[i] = Message("user", text)
            return override, replace(request, messages=tuple(messages))
    return None, request
