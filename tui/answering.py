"""What the chat does around one answer, independent of widgets: the request it sends, the
one-line message for each error class, and saving partial text at least once a second."""

from __future__ import annotations

import time

from router.protocol import (
    BackendError,
    ChatRequest,
    ContextTooLong,
    Final,
    Message,
    ModelError,
    Overloaded,
    Sampling,
    Tool,
    ToolCall,
    Unauthorized,
    Unavailable,
)
from tui.store import Conversation, Store, StoredMessage
from tui.store_parts import AnswerParts

__all__ = ["PartialSaver", "PartsCollector", "build_request", "describe_error"]

SAVE_EVERY_S = 0.5
"""Partial answers are written at least this often while text arrives (the issue asks ≤ 1 s)."""


def build_request(
    conv: Conversation,
    history: list[StoredMessage],
    *,
    max_tokens: int,
    parts: dict[int, AnswerParts] | None = None,
    think: bool | None = None,
    tools: tuple[Tool, ...] = (),
) -> ChatRequest:
    """The request for the next answer: the system prompt, then every user message and every
    answer that has text (failed and empty answers are left out), each answer with its
    reasoning (`parts`; the model's template decides whether that is sent again) and the tool
    calls the chat ran for it, with their results, before its text. `tools`: what the model
    may call now (the conversation's MCP tools)."""
    messages: list[Message] = []
    parts = parts or {}
    if conv.system_prompt:
        messages.append(Message("system", conv.system_prompt))
    for msg in history:
        answer = msg.role == "assistant" and msg.content and msg.status != "error"
        if msg.role == "user":
            messages.append(Message("user", msg.content))
        elif answer:
            part = parts.get(msg.id, AnswerParts())
            ran = [c for c in part.tool_calls if "result" in c]
            if ran:
                calls = tuple(ToolCall(c["id"], c["name"], c["arguments"]) for c in ran)
                messages.append(Message("assistant", "", tool_calls=calls))
                messages += [Message("tool", c["result"], tool_call_id=c["id"]) for c in ran]
            messages.append(Message("assistant", msg.content, reasoning=part.reasoning))
    return ChatRequest(
        messages=tuple(messages),
        sampling=Sampling(max_tokens=max_tokens),
        adapter=conv.adapter or None,
        conversation_id=conv.id,
        think=think,
        tools=tools,
    )


def describe_error(exc: BaseException) -> str:
    """One line per error class: what happened and what to do. Never a traceback."""
    where = f" ({exc.backend})" if isinstance(exc, BackendError) and exc.backend else ""
    if isinstance(exc, Unauthorized):
        return f"The cloud refused the API key{where}: set a new key in Settings (F3)."
    if isinstance(exc, Overloaded):
        after = f" in {exc.retry_after:.0f} s" if exc.retry_after else " shortly"
        return f"Too busy to answer{where}: {exc}. Try again{after} (Ctrl+R)."
    if isinstance(exc, ContextTooLong):
        return (
            f"This conversation no longer fits the model's context{where}: {exc}. "
            "Start a new conversation (Ctrl+N) or edit the last message (Ctrl+L)."
        )
    if isinstance(exc, ModelError):
        return f"The model failed{where}: {exc}. Switch model (F9) or check the adapter (F6)."
    if isinstance(exc, Unavailable):
        return f"Not reachable{where}: {exc}. Ctrl+R retries."
    if isinstance(exc, BackendError):
        return f"The answer failed{where}: {exc}."
    return f"Unexpected error ({type(exc).__name__}: {exc}); the conversation is saved."


class PartialSaver:
    """Writes an answer's text to the store while it streams: at most every SAVE_EVERY_S, so
    a crash or a kill loses less than a second."""

    def __init__(self, store: Store, message_id: int) -> None:
        self._store = store
        self._id = message_id
        self._parts: list[str] = []
        self._saved_at = time.monotonic()
        self._dirty = False

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def add(self, text: str) -> None:
        self._parts.append(text)
        self._dirty = True
        if time.monotonic() - self._saved_at >= SAVE_EVERY_S:
            self.flush()

    def flush(self) -> None:
        if self._dirty:
            self._store.save_partial(self._id, self.text)
            self._dirty = False
        self._saved_at = time.monotonic()


class PartsCollector:
    """An answer's reasoning and tool calls as they stream, for the store (tui/store_parts)."""

    def __init__(self) -> None:
        self.reasoning: list[str] = []
        self.calls: list[ToolCall] = []
        self.results: dict[str, str] = {}

    def add_reasoning(self, text: str) -> None:
        self.reasoning.append(text)

    def restart(self) -> None:
        """The answer started over on the other side (it failed while thinking)."""
        self.reasoning, self.calls, self.results = [], [], {}

    def add_call(self, call: ToolCall) -> None:
        self.calls.append(call)

    def add_result(self, call_id: str, result: str) -> None:
        """What the model read back for one of its calls (the chat ran it)."""
        self.results[call_id] = result

    def parts(self, final: Final | None) -> AnswerParts:
        usage = final.usage if final is not None else None
        route = final.route if final is not None else None
        thinking_s = route.thinking_s if route and route.thinking_s is not None else (
            usage.thinking_s if usage else None
        )
        return AnswerParts(
            reasoning="".join(self.reasoning),
            thinking_s=thinking_s if self.reasoning else None,
            reasoning_tokens=usage.reasoning_tokens if usage else 0,
            tool_calls=tuple(
                {"id": c.id, "name": c.name, "arguments": c.arguments}
                | ({"result": self.results[c.id]} if c.id in self.results else {})
                for c in self.calls
            ),
        )
