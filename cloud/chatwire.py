"""The contract's reasoning and tools on OpenAI's chat wire, as vLLM speaks it.

Out: messages with `tool_calls`, `tool_call_id` and the assistant's `reasoning` (vLLM hands
it to the chat template as `reasoning_content` too), `tools`, `tool_choice` and the thinking
switch (`chat_template_kwargs.enable_thinking`). In: stream deltas whose `reasoning` /
`reasoning_content` (vLLM's `--reasoning-parser`), `content` and `tool_calls` (fragments by
index, from `--tool-call-parser`) become `ReasoningDelta`, `TextDelta` and whole `ToolCall`
events, trimmed by the rule the local engine applies too (`router.reasoning`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from router.protocol import ChatRequest, ReasoningDelta, ReasoningTrim, TextDelta, ToolCall

__all__ = ["FALLBACK_HEADER", "DeltaReader", "request_fields", "request_messages"]

# The tandem client sends it: "this caller has a model of its own". The gateway then answers
# a busy service's 429 at once (the device answers) instead of queueing the request.
FALLBACK_HEADER = "x-tandem-fallback"

Event = TextDelta | ReasoningDelta | ToolCall


def request_messages(request: ChatRequest) -> list[dict[str, Any]]:
    """The conversation as OpenAI chat messages, the partial answer last when continuing."""
    out: list[dict[str, Any]] = []
    for m in request.messages:
        message: dict[str, Any] = {"role": m.role, "content": m.content}
        if m.tool_calls:
            message["tool_calls"] = [c.to_openai() for c in m.tool_calls]
        if m.tool_call_id:
            message["tool_call_id"] = m.tool_call_id
        if m.reasoning:
            message["reasoning"] = m.reasoning
        out.append(message)
    if request.continue_from:
        partial: dict[str, Any] = {"role": "assistant", "content": request.continue_from}
        if request.continue_reasoning:
            partial["reasoning"] = request.continue_reasoning
        out.append(partial)
    return out


def request_fields(request: ChatRequest) -> dict[str, Any]:
    """`tools`, `tool_choice` and `chat_template_kwargs` for the request body (only those set)."""
    fields: dict[str, Any] = {}
    if request.tools:
        fields["tools"] = [t.to_openai() for t in request.tools]
        choice = request.tool_choice
        fields["tool_choice"] = (
            choice if choice in ("auto", "none", "required")
            else {"type": "function", "function": {"name": choice}}
        )
    think = request.think
    if request.continue_from:
        # The reasoning of a continued answer is over: vLLM's reasoning parser must read the
        # continuation as answer text (the switch only changes the generation prompt, which a
        # continued message does not get).
        think = False
    if think is not None:
        fields["chat_template_kwargs"] = {"enable_thinking": think}
    return fields


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: str = ""


class DeltaReader:
    """Turns one answer's stream deltas into contract events."""

    def __init__(self) -> None:
        self.trim = ReasoningTrim()
        self._calls: dict[int, _PartialCall] = {}

    def read(self, delta: dict[str, Any]) -> list[Event]:
        """One choice's `delta` object; raises TypeError on fields of the wrong type."""
        events: list[Event] = []
        reasoning = delta.get("reasoning") or delta.get("reasoning_content")
        if reasoning:
            if not isinstance(reasoning, str):
                raise TypeError("reasoning is not text")
            body = self.trim.reasoning_piece(reasoning)
            if body:
                events.append(ReasoningDelta(body))
        text = delta.get("content")
        if text:
            if not isinstance(text, str):
                raise TypeError("content is not text")
            body = self.trim.text_piece(text)
            if body:
                events.append(TextDelta(body))
        for fragment in delta.get("tool_calls") or ():
            self._add(fragment)
        return events

    def finish(self) -> list[Event]:
        """At the end of the answer: the tool calls, each whole."""
        calls: list[Event] = []
        for index in sorted(self._calls):
            call = self._calls[index]
            if call.name:
                calls.append(ToolCall(call.id or f"call_{index}", call.name,
                                      call.arguments or "{}"))
        self._calls.clear()
        self.trim.close()
        return calls

    def _add(self, fragment: Any) -> None:
        if not isinstance(fragment, dict):
            raise TypeError("a tool call fragment is not an object")
        index = fragment.get("index", len(self._calls))
        if not isinstance(index, int):
            raise TypeError("a tool call index is not a number")
        call = self._calls.setdefault(index, _PartialCall())
        call.id = str(fragment.get("id") or call.id)
        function = fragment.get("function") or {}
        if not isinstance(function, dict):
            raise TypeError("a tool call's function is not an object")
        if function.get("name"):
            call.name = str(function["name"])
        arguments = function.get("arguments")
        if arguments:
            call.arguments += arguments if isinstance(arguments, str) else json.dumps(arguments)
