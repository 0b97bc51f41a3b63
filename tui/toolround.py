"""One round of tool calls in an answer, independent of widgets: ask, run each call the model
made on this device, and continue the request with the results.

A call that cannot give a result (unknown tool, denied, failed, timed out, server gone) still
gets one: a line that says so, which the model reads and the card shows, and the answer goes
on. The results travel as `tool` messages, which the router scans for private data like any
other message (a flagged result keeps the rest of the answer on the device, or redacted)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace

from router.protocol import ChatRequest, Message, ToolCall
from tui.mcp.hub import McpError, McpHub, McpTool
from tui.mcp.permissions import Decision, Permissions

__all__ = [
    "MAX_ROUNDS",
    "AnswerRound",
    "Ask",
    "ToolOutcome",
    "continue_with_results",
    "run_tool_calls",
]

MAX_ROUNDS = 8
"""Tool rounds in one answer: a model that keeps calling stops here (its last calls get no
further answer)."""

Ask = Callable[[McpTool, ToolCall], Awaitable[Decision]]
"""Asks the user about one call (the chat's permission dialog)."""


@dataclass
class AnswerRound:
    """What the model said and called in one round of an answer (it goes on after tools)."""

    text: str = ""
    reasoning: str = ""
    calls: list[ToolCall] = field(default_factory=list)

    def restart(self) -> None:
        """The round started over on the other side (it failed while thinking)."""
        self.text, self.reasoning, self.calls = "", "", []


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    call: ToolCall
    result: str
    """What the model reads back (and the card shows)."""
    ok: bool


async def run_tool_calls(
    calls: Sequence[ToolCall], hub: McpHub, permissions: Permissions, ask: Ask
) -> list[ToolOutcome]:
    """Each call in order: asked for (unless permitted), run, its result or a line why not."""
    outcomes: list[ToolOutcome] = []
    for call in calls:
        tool = hub.find(call.name)
        if tool is None:
            outcomes.append(ToolOutcome(call, f"error: no tool named {call.name!r} is "
                                              "available", ok=False))
            continue
        if not permissions.granted(hub, tool):
            decision = await ask(tool, call)
            permissions.record(tool, decision)
            if decision is Decision.DENY:
                outcomes.append(ToolOutcome(call, "The user denied this tool call; answer "
                                                  "without it.", ok=False))
                continue
        try:
            outcomes.append(ToolOutcome(call, await hub.call(call.name, call.arguments), True))
        except McpError as exc:
            outcomes.append(ToolOutcome(call, f"error: {exc}", ok=False))
    return outcomes


def continue_with_results(
    request: ChatRequest, text: str, reasoning: str, outcomes: Sequence[ToolOutcome]
) -> ChatRequest:
    """The request for the answer's next round: what the model said and called, then each
    call's result."""
    said = Message("assistant", text, tool_calls=tuple(o.call for o in outcomes),
                   reasoning=reasoning)
    results = tuple(Message("tool", o.result, tool_call_id=o.call.id) for o in outcomes)
    return replace(request, messages=(*request.messages, said, *results))
