"""The contract every backend speaks: the local engine, the cloud client and the hybrid router.

A backend turns a `ChatRequest` into a stream of events: zero or more `TextDelta`s followed by
exactly one `Final` record, then nothing. A routing backend (router.hybrid) also yields a
`Routed` event before the first delta, saying where the answer goes and why, and another one
if the answer moves to the other side mid-stream; plain backends (the local engine, the cloud
client) need not yield any, and consumers must not wait for one. The consumer may stop early
by closing the stream (`await stream.aclose()`, or leaving an `async with
contextlib.aclosing(...)` block); the backend must then cancel the generation and free its
slot. A failure is raised from the stream as one of the typed errors (router.errors), possibly
after some deltas (a mid-stream failure): the router keeps the text it already has and may
continue elsewhere.

A thinking model's stream starts with `ReasoningDelta`s (its `<think>` block, split off by the
backend with its engine's own parser), then the answer's `TextDelta`s; a model that calls a
tool yields a whole `ToolCall` per call and ends with finish_reason "tool_calls". The caller
runs the tool and sends its result back as a `tool` message (`tool_call_id`). Every backend
yields the same shapes for the same request (tests/test_reasoning_parity.py).

The request carries everything a backend or router needs to decide: the sampling, the adapter,
the conversation id (for KV-cache reuse), a pin to one side (`pin`, a wish the router weighs)
and `local_only` (the conversation's promise to stay on this device: a hard rule).

Besides `Backend` (stream, health, capabilities), the parts the app owns speak `Lifecycle`
(start, ready, aclose): the local engine, the cloud client and the hybrid backend. `Service`
is both.

Errors, as a tree (all of tandem's errors hang from `TandemError`; see router.errors)::

    BackendError                 any failure a caller can act on; `str()` is a sentence for a person
    ├── Unavailable              cannot be reached, crashed, connection lost, not loaded
    ├── Unauthorized             the key was refused
    ├── Overloaded               busy; try again after `retry_after` seconds (None: unknown)
    ├── ContextTooLong           prompt + max_tokens exceed the context window
    └── ModelError               the model itself failed (out of memory, bad weights, bad adapter)

Nothing here imports MLX, httpx or vLLM: the router and the tests read this module alone.
"""

from __future__ import annotations

import math
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from router.errors import (
    BackendError,
    ContextTooLong,
    InvalidRequest,
    ModelError,
    Overloaded,
    ProtocolViolation,
    TandemError,
    Unauthorized,
    Unavailable,
)
from router.reasoning import ReasoningTrim
from router.tools import Tool, ToolCall, check_tool_choice

__all__ = [
    "Backend",
    "BackendError",
    "Capabilities",
    "ChatRequest",
    "ContextTooLong",
    "Final",
    "FinishReason",
    "Health",
    "InvalidRequest",
    "Lifecycle",
    "Load",
    "Message",
    "ModelError",
    "Overloaded",
    "Pin",
    "ProtocolViolation",
    "ReasoningDelta",
    "ReasoningTrim",
    "Role",
    "Route",
    "Routed",
    "Sampling",
    "Service",
    "StreamEvent",
    "TandemError",
    "TextDelta",
    "Tool",
    "ToolCall",
    "Unauthorized",
    "Unavailable",
    "Usage",
    "checked",
    "collect",
]

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant", "tool")
FinishReason = Literal["stop", "length", "cancelled", "tool_calls"]
Pin = Literal["local", "cloud"]
"""A side of the router: this device or the cloud."""
PINS: tuple[Pin, ...] = ("local", "cloud")


# --- the request ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of a conversation."""

    role: Role
    content: str
    tool_calls: tuple[ToolCall, ...] = ()
    """The assistant's calls in this turn (its content may be empty then)."""
    tool_call_id: str | None = None
    """On a `tool` message: the id of the call whose result `content` is."""
    reasoning: str = ""
    """The assistant's reasoning in this turn; the model's chat template decides whether it
    is sent again (Qwen3's drops it from turns before the last question)."""

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise InvalidRequest(f"unknown role {self.role!r}; expected one of {', '.join(ROLES)}")
        if (self.tool_calls or self.reasoning) and self.role != "assistant":
            raise InvalidRequest("only assistant messages carry tool calls or reasoning")
        if self.role == "tool" and not self.tool_call_id:
            raise InvalidRequest("a tool message needs the tool_call_id it answers")
        if self.tool_call_id is not None and self.role != "tool":
            raise InvalidRequest("only tool messages carry a tool_call_id")


@dataclass(frozen=True, slots=True)
class Sampling:
    """How to pick tokens. temperature 0 means greedy (deterministic)."""

    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    """Strings that end the answer; the matched stop string is not part of the text."""
    seed: int | None = None
    """In [0, 2**63): what both engines accept (MLX takes an unsigned 64-bit seed)."""

    def __post_init__(self) -> None:
        # Types too, not only ranges: a backend must never receive a value it cannot use
        # (a seed "x" once reached mx.random.seed inside a batch and failed every answer in it).
        if not isinstance(self.max_tokens, int) or isinstance(self.max_tokens, bool):
            raise InvalidRequest("max_tokens must be an integer")
        if self.max_tokens < 1:
            raise InvalidRequest("max_tokens must be at least 1")
        if not isinstance(self.temperature, int | float) or not math.isfinite(self.temperature):
            raise InvalidRequest("temperature must be a finite number")
        if self.temperature < 0:
            raise InvalidRequest("temperature must not be negative")
        if not isinstance(self.top_p, int | float) or not 0 < self.top_p <= 1:
            raise InvalidRequest("top_p must be in (0, 1]")
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) for s in self.stop):
            raise InvalidRequest("stop must be a tuple of strings")
        if any(not s for s in self.stop):
            raise InvalidRequest("stop strings must not be empty")
        if self.seed is not None and (
            not isinstance(self.seed, int)
            or isinstance(self.seed, bool)
            or not 0 <= self.seed < 2**63
        ):
            raise InvalidRequest("seed must be an integer from 0 to 2**63 - 1")


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """What the chat asks of a backend."""

    messages: tuple[Message, ...]
    sampling: Sampling = Sampling()
    adapter: str | None = None
    """Name of a fine-tuned LoRA adapter to apply, or None for the base model."""
    conversation_id: str | None = None
    """Lets a backend keep this conversation's KV cache and reuse it on the next turn."""
    continue_from: str = ""
    """Assistant text already produced (elsewhere): the backend continues it, and its deltas
    hold only the new text. Used when an answer moves from one side to the other mid-stream."""
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    pin: Pin | None = None
    """The side the user asked for ("local", "cloud") or None: the router decides. A wish: the
    router still puts privacy and availability first, and says so in the route."""
    local_only: bool = False
    """The conversation is pinned to this device: a hard rule of the router, above the mode,
    a `/cloud` prefix and `pin`. Nothing of it is sent to the cloud, not even on failover."""
    tools: tuple[Tool, ...] = ()
    """Functions the model may call; its calls arrive as `ToolCall` events."""
    tool_choice: str = "auto"
    """"auto" (the model decides), "none", "required", or a tool's name (that one)."""
    think: bool | None = None
    """A thinking model's switch (Qwen3's `enable_thinking`): None leaves the model's default;
    ignored by models that do not think."""
    continue_reasoning: str = ""
    """With `continue_from`: the reasoning (finished) that came before the partial answer, so
    the template can put it back where the model wrote it."""
    privacy_cleared: frozenset[tuple[str, int, str]] = frozenset()
    """Privacy findings (kind, message, part) the router saw and let go to the cloud
    (router.privacy.clearance); the cloud client refuses to send any other finding."""

    def __post_init__(self) -> None:
        check_tool_choice(self.tool_choice, self.tools)
        if self.pin is not None and self.pin not in PINS:
            raise InvalidRequest(f"pin must be 'local', 'cloud' or None, not {self.pin!r}")
        if self.local_only and self.pin == "cloud":
            raise InvalidRequest("a local-only conversation cannot be pinned to the cloud")
        if not self.messages:
            raise InvalidRequest("a request needs at least one message")
        if self.messages[-1].role == "assistant":
            raise InvalidRequest("the last message is the assistant's; use continue_from instead")


# --- the stream -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the answer, in order. Never empty."""

    text: str
    tokens: int | None = None
    """How many completion tokens this piece stands for, when the backend knows (a piece may
    hold several: speculative decoding, a cloud chunk). The router counts these to keep a
    continued answer within max_tokens; None: unknown (the router assumes the worst)."""


@dataclass(frozen=True, slots=True)
class ReasoningDelta:
    """A piece of a thinking model's reasoning, before its answer; never empty. Not part of
    the answer's text: the chat shows it apart and does not send it back as content."""

    text: str
    tokens: int | None = None
    """As TextDelta.tokens."""


@dataclass(frozen=True, slots=True)
class Usage:
    """What one answer cost and how fast it ran."""

    prompt_tokens: int
    completion_tokens: int
    ttft_s: float | None = None
    """Seconds from the request to its first token."""
    decode_tokens_per_s: float | None = None
    """Completion tokens per second after the first token."""
    cached_prompt_tokens: int = 0
    """Prompt tokens served from a kept KV cache instead of being processed again."""
    draft_tokens_accepted: int = 0
    """Completion tokens that came from the speculative draft."""
    peak_memory_bytes: int | None = None
    draft_tokens_proposed: int = 0
    """Tokens the draft proposed (accepted or not); accepted ÷ proposed is the acceptance rate."""
    reasoning_tokens: int = 0
    """Of completion_tokens, those spent on reasoning (counted apart from the answer)."""
    thinking_s: float | None = None
    """Seconds from the first reasoning piece to the end of the reasoning; None: no thinking."""


@dataclass(frozen=True, slots=True)
class Route:
    """Where an answer ran and why, in words a person can read. Filled in by the router."""

    backend: str
    rule: str
    """The policy rule that decided, e.g. "privacy", "overflow", "complexity"."""
    reason: str
    """One short sentence, e.g. "email address in message 3 → kept on this device"."""
    scores: Mapping[str, float] = field(default_factory=dict)
    failover: str | None = None
    """Set when the answer moved sides, e.g. "continued on this device: cloud connection lost"."""
    thinking_s: float | None = None
    """In the Final's route: how long the answer thought; None when it did not think."""
    restarted: bool = False
    """With `failover`: the answer starts over on the other side (it failed while still
    thinking); the consumer drops the reasoning it received before this route."""


@dataclass(frozen=True, slots=True)
class Routed:
    """Where the answer goes and why, before its first delta (and again, with
    `route.failover` set, when it moves to the other side). Yielded by routing backends only;
    the `Final` carries the same route at the end."""

    route: Route


@dataclass(frozen=True, slots=True)
class Final:
    """The last event of every stream."""

    finish_reason: FinishReason
    usage: Usage
    backend: str
    model: str
    adapter: str | None = None
    route: Route | None = None


StreamEvent = TextDelta | ReasoningDelta | ToolCall | Routed | Final


# --- the backend ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Load:
    """How busy a backend is right now; the router's overflow rule reads this."""

    queue_depth: int = 0
    """Requests waiting to start."""
    active_sequences: int = 0
    """Requests generating now."""
    recent_tokens_per_s: float | None = None
    """Aggregate decode speed over the last few seconds, None before any decode."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a backend can do and how loaded it is."""

    model: str
    context_window: int
    adapters: tuple[str, ...] = ()
    load: Load = Load()


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    detail: str = ""
    checked_at: float = field(default_factory=time.monotonic)
    error: BackendError | None = None
    """The typed error behind a failed check, when there is one (e.g. Unauthorized)."""


@runtime_checkable
class Backend(Protocol):
    """Anything that can answer a chat: the local engine, the cloud client, the hybrid router."""

    name: str

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """Stream the answer. Closing the generator cancels it and frees its slot."""
        ...

    async def health(self) -> Health: ...

    def capabilities(self) -> Capabilities: ...


@runtime_checkable
class Lifecycle(Protocol):
    """What the app does with the parts it owns: start them, ask whether they are ready,
    close them. The local engine, the cloud client and the hybrid backend speak it."""

    async def start(self) -> None:
        """Get ready to answer (load the model...); idempotent: later calls return at once,
        or raise the error the first one raised."""
        ...

    @property
    def ready(self) -> bool:
        """True once `start()` has finished and the part can answer."""
        ...

    async def aclose(self) -> None:
        """Free what `start()` took; open streams end with Unavailable. Idempotent."""
        ...


@runtime_checkable
class Service(Backend, Lifecycle, Protocol):
    """A backend with a lifecycle: what the app composes and the hybrid backend wraps."""


# --- helpers every consumer needs -----------------------------------------------------------


async def checked(stream: AsyncIterator[StreamEvent]) -> AsyncGenerator[StreamEvent, None]:
    """Pass events through, raising ProtocolViolation if the stream breaks the contract:
    an empty delta, a `Routed` after the first delta without a failover, reasoning after the
    answer's text or a tool call (unless a failover restarted the answer), an event after the
    Final, a stream that ends without a Final."""
    final_seen = text_seen = False
    answer_seen = False  # answer text or a tool call: the reasoning is over
    try:
        async for event in stream:
            if final_seen:
                raise ProtocolViolation(f"event after the final record: {event!r}")
            if isinstance(event, TextDelta):
                if not event.text:
                    raise ProtocolViolation("empty text delta")
                if event.tokens is not None and event.tokens < 0:
                    raise ProtocolViolation(f"negative token count: {event!r}")
                text_seen = answer_seen = True
            elif isinstance(event, ReasoningDelta):
                if not event.text:
                    raise ProtocolViolation("empty reasoning delta")
                if answer_seen:
                    raise ProtocolViolation(f"reasoning after the answer began: {event!r}")
                text_seen = True
            elif isinstance(event, ToolCall):
                text_seen = answer_seen = True
            elif isinstance(event, Routed):
                if text_seen and not event.route.failover:
                    raise ProtocolViolation("a route after the first delta that is no failover")
                if event.route.failover:
                    answer_seen = False  # a restarted answer may think again
            elif isinstance(event, Final):
                final_seen = True
            else:
                raise ProtocolViolation(f"not a stream event: {event!r}")
            yield event
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()
    if not final_seen:
        raise ProtocolViolation("stream ended without a final record")


async def collect(stream: AsyncIterator[StreamEvent]) -> tuple[str, Final]:
    """Run a stream to its end: the whole text and the final record (routes are in it)."""
    parts: list[str] = []
    final: Final | None = None
    async for event in checked(stream):
        if isinstance(event, TextDelta):
            parts.append(event.text)
        elif isinstance(event, Final):
            final = event
    assert final is not None  # checked() guarantees it
    return "".join(parts), final
