"""Split the model's text stream into reasoning, answer text and tool calls, with mlx-lm's own
machinery: the tokenizer wrapper's think and tool-call markers, `mlx_lm.generate`'s
`TextStateMachine` (the one `mlx_lm.server` runs) and the tool parser mlx-lm picked for the
model (`mlx_lm.tool_parsers`). Nothing here knows a marker by heart.

It reads the text the sequence has already cleared of stop strings, on the asyncio side, so
the worker, batching, the KV cache and cancellation see nothing of it. The reasoning/answer
whitespace is trimmed by `router.reasoning.ReasoningTrim`, the rule the cloud client applies
to vLLM's split too, so both sides yield the same shapes.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Sequence
from typing import Any

from router.protocol import (
    ChatRequest,
    Final,
    FinishReason,
    ReasoningDelta,
    ReasoningTrim,
    TextDelta,
    Tool,
    ToolCall,
)

__all__ = ["StreamParser", "answer_parser", "initial_state"]

Event = TextDelta | ReasoningDelta | ToolCall


def initial_state(tokenizer: Any, prompt: Sequence[int]) -> str:
    """"reasoning" when the prompt leaves a think block open (a template that opens it in the
    generation prompt, or an answer continued mid-thought), else "normal" (mlx_lm.server's
    rule)."""
    if not getattr(tokenizer, "has_thinking", False):
        return "normal"
    start = tokenizer.rfind_think_start(list(prompt))
    end = tokenizer.rfind_think_end(list(prompt))
    return "reasoning" if start > end else "normal"


def answer_parser(
    tokenizer: Any, request: ChatRequest, prompt: Sequence[int]
) -> StreamParser | None:
    """The parser for one answer, or None when the model neither thinks nor calls tools (its
    text then passes through untouched)."""
    thinks = getattr(tokenizer, "has_thinking", False)
    if not (thinks or getattr(tokenizer, "has_tool_calling", False)):
        return None
    tools = () if request.tool_choice == "none" else request.tools
    return StreamParser(tokenizer, tools=tools, initial=initial_state(tokenizer, prompt))


class StreamParser:
    """Feed text pieces in order; get contract events back. One per answer."""

    def __init__(
        self, tokenizer: Any, *, tools: Sequence[Tool] = (), initial: str = "normal"
    ) -> None:
        from mlx_lm.generate import make_text_state_machine

        self._machine = make_text_state_machine(tokenizer)
        self._state = self._machine.make_state(initial)
        self._calls_wanted = bool(tools) and getattr(tokenizer, "has_tool_calling", False)
        self._parse = tokenizer.tool_parser if self._calls_wanted else None
        self._start = getattr(tokenizer, "tool_call_start", None) or ""
        self._end = getattr(tokenizer, "tool_call_end", None) or ""
        self._tools = [t.to_openai() for t in tools]
        self._tool_text = ""
        self._previous = initial
        self._trim = ReasoningTrim(in_reasoning=initial == "reasoning")
        self._tokenizer = tokenizer
        self._pending_tokens = 0  # tokens of pieces that produced no event yet
        self.tool_calls = 0

    @property
    def reasoning(self) -> str:
        """All reasoning text so far (for the usage record)."""
        return self._trim.reasoning

    @property
    def thought(self) -> bool:
        return self._trim.thought

    def feed_delta(self, delta: TextDelta) -> list[Event]:
        """A delta from the sequence: its token count goes with the first event it yields
        (or the next one, when a marker or held-back whitespace yields none)."""
        events = self.feed(delta.text)
        if delta.tokens is not None:
            self._pending_tokens += delta.tokens
        for i, event in enumerate(events):
            if isinstance(event, (TextDelta, ReasoningDelta)):
                events[i] = dataclasses.replace(event, tokens=self._pending_tokens)
                self._pending_tokens = 0
                break
        return events

    def final(self, final: Final) -> Final:
        """The final record with the reasoning counted apart and a tool call's finish."""
        reasoning_tokens = 0
        if self.thought:
            text = self.reasoning
            reasoning_tokens = len(self._tokenizer.encode(text, add_special_tokens=False)) + 2
            reasoning_tokens = min(reasoning_tokens, final.usage.completion_tokens)
        usage = dataclasses.replace(
            final.usage, reasoning_tokens=reasoning_tokens, thinking_s=self._trim.thinking_s
        )
        reason: FinishReason = final.finish_reason
        if self.tool_calls and reason == "stop":
            reason = "tool_calls"
        return dataclasses.replace(final, usage=usage, finish_reason=reason)

    def feed(self, text: str) -> list[Event]:
        from mlx_lm.generate import TextStateMachine

        self._state, segments = TextStateMachine.split(self._state, text)
        return self._events(segments)

    def finish(self) -> list[Event]:
        """The end of the answer: flush what the state machine held back (text that might
        have been the start of a marker) and an unterminated tool call."""
        from mlx_lm.generate import TextStateMachine

        self._state, rest, name = TextStateMachine.flush(self._state)
        events = self._events([(name, rest)]) if rest else []
        if self._tool_text:
            events += self._call(self._tool_text, closed=False)
            self._tool_text = ""
        self._trim.close()
        return events

    def _events(self, segments: list[tuple[str | None, str]]) -> list[Event]:
        events: list[Event] = []
        for name, text in segments:
            state = name or "normal"
            if self._previous == "tool" and state != "tool":
                events += self._call(self._tool_text, closed=True)
                self._tool_text = ""
            self._previous = state
            if state == "tool":
                self._tool_text += text
            elif state == "reasoning":
                events += self._reasoning(text)
            elif text:
                events += self._text(text)
        return events

    def _reasoning(self, text: str) -> list[Event]:
        body = self._trim.reasoning_piece(text)
        return [ReasoningDelta(body)] if body else []

    def _text(self, text: str) -> list[Event]:
        body = self._trim.text_piece(text)
        return [TextDelta(body)] if body else []

    def _call(self, body: str, *, closed: bool) -> list[Event]:
        raw = self._start + body + (self._end if closed else "")
        if self._parse is None:
            # No tools were offered: the call is just text, as vLLM leaves it then.
            return self._text(raw)
        try:
            parsed = self._parse(body, self._tools)
        except ValueError:  # json.JSONDecodeError is one: a call cut off or malformed
            return self._text(raw)
        calls: list[Event] = []
        for item in parsed if isinstance(parsed, list) else [parsed]:
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                return self._text(raw)
            arguments = item.get("arguments", {})
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments, ensure_ascii=False)
            calls.append(ToolCall(f"call_{uuid.uuid4().hex[:24]}", item["name"], arguments))
        self.tool_calls += len(calls)
        self._trim.close()
        return calls
