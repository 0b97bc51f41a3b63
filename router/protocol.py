"""The contract every backend speaks: the local engine, the cloud client and the hybrid router.

A backend turns a `ChatRequest` into a stream of events: zero or more `TextDelta`s followed by
exactly one `Final` record, then nothing. The consumer may stop early by closing the stream
(`await stream.aclose()`, or leaving an `async with contextlib.aclosing(...)` block); the
backend must then cancel the generation and free its slot. A failure is raised from the stream
as one of the typed errors below, possibly after some deltas (a mid-stream failure): the router
keeps the text it already has and may continue elsewhere.

Errors, as a tree::

    BackendError                 any failure a caller can act on; `str()` is a sentence for a person
    ├── Unavailable              cannot be reached, crashed, connection lost, not loaded
    ├── Unauthorized             the key was refused
    ├── Overloaded               busy; try again after `retry_after` seconds (None: unknown)
    ├── ContextTooLong           prompt + max_tokens exceed the context window
    └── ModelError               the model itself failed (out of memory, bad weights, bad adapter)

Nothing here imports MLX, httpx or vLLM: the router and the tests read this module alone.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

__all__ = [
    "Backend",
    "BackendError",
    "Capabilities",
    "ChatRequest",
    "ContextTooLong",
    "Final",
    "FinishReason",
    "Health",
    "Load",
    "Message",
    "ModelError",
    "Overloaded",
    "ProtocolViolation",
    "Role",
    "Route",
    "Sampling",
    "StreamEvent",
    "TextDelta",
    "Unauthorized",
    "Unavailable",
    "Usage",
    "checked",
    "collect",
]

Role = Literal["system", "user", "assistant", "tool"]
ROLES: tuple[Role, ...] = ("system", "user", "assistant", "tool")
FinishReason = Literal["stop", "length", "cancelled"]


# --- the request ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """One turn of a conversation."""

    role: Role
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"unknown role {self.role!r}; expected one of {', '.join(ROLES)}")


@dataclass(frozen=True, slots=True)
class Sampling:
    """How to pick tokens. temperature 0 means greedy (deterministic)."""

    max_tokens: int = 512
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    """Strings that end the answer; the matched stop string is not part of the text."""
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError("max_tokens must be at least 1")
        if self.temperature < 0:
            raise ValueError("temperature must not be negative")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if any(not s for s in self.stop):
            raise ValueError("stop strings must not be empty")


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

    def __post_init__(self) -> None:
        if not self.messages:
            raise ValueError("a request needs at least one message")
        if self.messages[-1].role == "assistant":
            raise ValueError("the last message is the assistant's; use continue_from instead")


# --- the stream -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the answer, in order. Never empty."""

    text: str


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


@dataclass(frozen=True, slots=True)
class Final:
    """The last event of every stream."""

    finish_reason: FinishReason
    usage: Usage
    backend: str
    model: str
    adapter: str | None = None
    route: Route | None = None


StreamEvent = TextDelta | Final


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


@runtime_checkable
class Backend(Protocol):
    """Anything that can answer a chat: the local engine, the cloud client, the hybrid router."""

    name: str

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        """Stream the answer. Closing the generator cancels it and frees its slot."""
        ...

    async def health(self) -> Health: ...

    def capabilities(self) -> Capabilities: ...


# --- errors ---------------------------------------------------------------------------------


class BackendError(Exception):
    """A failure the caller can act on. The message is one sentence for a person."""

    def __init__(self, message: str, *, backend: str = "") -> None:
        super().__init__(message)
        self.backend = backend


class Unavailable(BackendError):
    """Cannot be reached, crashed, lost the connection, or is not loaded."""


class Unauthorized(BackendError):
    """The API key was refused."""


class Overloaded(BackendError):
    """Too busy to take the request now."""

    def __init__(
        self, message: str, *, retry_after: float | None = None, backend: str = ""
    ) -> None:
        super().__init__(message, backend=backend)
        self.retry_after = retry_after


class ContextTooLong(BackendError):
    """The prompt plus the requested tokens do not fit the context window."""

    def __init__(
        self,
        message: str,
        *,
        prompt_tokens: int | None = None,
        context_window: int | None = None,
        backend: str = "",
    ) -> None:
        super().__init__(message, backend=backend)
        self.prompt_tokens = prompt_tokens
        self.context_window = context_window


class ModelError(BackendError):
    """The model failed: out of memory, corrupt weights, an adapter that does not fit."""


class ProtocolViolation(AssertionError):
    """A backend broke the stream contract (a bug in that backend, not a user error)."""


# --- helpers every consumer needs -----------------------------------------------------------


async def checked(stream: AsyncIterator[StreamEvent]) -> AsyncGenerator[StreamEvent, None]:
    """Pass events through, raising ProtocolViolation if the stream breaks the contract:
    an empty delta, an event after the Final, a stream that ends without a Final."""
    final_seen = False
    try:
        async for event in stream:
            if final_seen:
                raise ProtocolViolation(f"event after the final record: {event!r}")
            if isinstance(event, TextDelta):
                if not event.text:
                    raise ProtocolViolation("empty text delta")
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
    """Run a stream to its end: the whole text and the final record."""
    parts: list[str] = []
    final: Final | None = None
    async for event in checked(stream):
        if isinstance(event, TextDelta):
            parts.append(event.text)
        else:
            final = event
    assert final is not None  # checked() guarantees it
    return "".join(parts), final
