"""`tandem serve`'s tools and reasoning, in OpenAI's chat-completions shape: the checks of
the request fields (`tools`, `tool_choice`, `parallel_tool_calls`, `chat_template_kwargs`,
`reasoning_effort`, and on messages `tool_calls`, `tool_call_id`, `reasoning_content`), their
translation into the contract, and the answer's `reasoning_content` and `tool_calls`.

The checks raise `ToolFieldError` (a 400 naming the field, as router.serve_checks'
FieldError is for the other fields); `router.serve_checks` registers them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from router.errors import TandemError
from router.protocol import Message, Tool, ToolCall
from router.tools import TOOL_CHOICES

__all__ = [
    "MESSAGE_TOOL_FIELDS",
    "TOOL_FIELDS",
    "ToolFieldError",
    "answer_message",
    "check_message_tools",
    "message_from",
    "parse_tool_fields",
    "tool_call_delta",
]

MAX_TOOLS = 128
MAX_TEXT = 1_000_000  # characters of reasoning or arguments in one message
MAX_SCHEMA_DEPTH = 32
MESSAGE_TOOL_FIELDS = {"tool_calls", "tool_call_id", "reasoning_content", "reasoning"}


class ToolFieldError(TandemError, ValueError):
    """A tools or reasoning field of a request body that tandem serve refuses (a 400)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


def _fail(message: str, param: str) -> ToolFieldError:
    return ToolFieldError(message, param)


def _name(value: Any, where: str, param: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 64:
        raise _fail(f"{where} must be a name of 1-64 characters", param)
    try:
        Tool(value)
    except ValueError as exc:
        raise _fail(f"{where}: {exc}", param) from exc
    return value


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_SCHEMA_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


def _tools(value: Any) -> None:
    if not isinstance(value, list) or len(value) > MAX_TOOLS:
        raise _fail(f"'tools' must be a list of at most {MAX_TOOLS} function tools", "tools")
    names = set()
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function" or set(tool) - {
            "type", "function"
        }:
            raise _fail(f"{where} must be {{type: 'function', function: {{...}}}}", "tools")
        function = tool.get("function")
        if not isinstance(function, dict) or set(function) - {
            "name", "description", "parameters", "strict"
        }:
            raise _fail(f"{where}.function must be {{name, description, parameters}}", "tools")
        names.add(_name(function.get("name"), f"{where}.function.name", "tools"))
        description = function.get("description")
        if description is not None and (not isinstance(description, str)
                                        or len(description) > 10_000):
            raise _fail(f"{where}.function.description must be text", "tools")
        parameters = function.get("parameters")
        if parameters is not None and (not isinstance(parameters, dict)
                                       or _depth(parameters) > MAX_SCHEMA_DEPTH):
            raise _fail(f"{where}.function.parameters must be a JSON schema object", "tools")
        if function.get("strict") is not None and not isinstance(function["strict"], bool):
            raise _fail(f"{where}.function.strict must be true or false", "tools")
    if len(names) != len(value):
        raise _fail("two tools have the same name", "tools")


def _tool_choice(value: Any) -> None:
    if value in TOOL_CHOICES:
        return
    if (
        isinstance(value, dict)
        and value.get("type") == "function"
        and isinstance(value.get("function"), dict)
    ):
        _name(value["function"].get("name"), "tool_choice.function.name", "tool_choice")
        return
    raise _fail("'tool_choice' must be none, auto, required or "
                "{type: 'function', function: {name}}", "tool_choice")


def _template_kwargs(value: Any) -> None:
    if not isinstance(value, dict) or set(value) - {"enable_thinking"} or not isinstance(
        value.get("enable_thinking", False), bool
    ):
        raise _fail("'chat_template_kwargs' may only hold enable_thinking (true or false)",
                    "chat_template_kwargs")


def _parallel(value: Any) -> None:
    if not isinstance(value, bool):
        raise _fail("'parallel_tool_calls' must be true or false", "parallel_tool_calls")


EFFORTS = ("none", "minimal", "low", "medium", "high")


def _effort(value: Any) -> None:
    if value not in EFFORTS:
        raise _fail(f"'reasoning_effort' must be one of {', '.join(EFFORTS)}", "reasoning_effort")


TOOL_FIELDS: dict[str, Callable[[Any], None]] = {
    "tools": _tools,
    "tool_choice": _tool_choice,
    "parallel_tool_calls": _parallel,  # accepted; the model decides how many calls it makes
    "chat_template_kwargs": _template_kwargs,
    "reasoning_effort": _effort,  # "none" turns thinking off; any other level turns it on
}


def check_message_tools(item: dict[str, Any], where: str) -> None:
    """A message's tool and reasoning fields: on the roles that may carry them, well formed."""
    role = item.get("role")
    calls = item.get("tool_calls")
    if calls is not None:
        if role != "assistant" or not isinstance(calls, list) or len(calls) > MAX_TOOLS:
            raise _fail(f"{where}.tool_calls: a list, on assistant messages only", "messages")
        for j, call in enumerate(calls):
            at = f"{where}.tool_calls[{j}]"
            function = call.get("function") if isinstance(call, dict) else None
            if (
                not isinstance(call, dict)
                or set(call) - {"id", "type", "function", "index"}
                or call.get("type", "function") != "function"
                or not isinstance(call.get("id"), str)
                or not 1 <= len(call["id"]) <= 256
                or not isinstance(function, dict)
                or set(function) - {"name", "arguments"}
            ):
                raise _fail(f"{at} must be {{id, type: 'function', function: {{name, "
                            "arguments}}}}", "messages")
            _name(function.get("name"), f"{at}.function.name", "messages")
            arguments = function.get("arguments", "")
            if not isinstance(arguments, str) or len(arguments) > MAX_TEXT:
                raise _fail(f"{at}.function.arguments must be JSON text", "messages")
    ident = item.get("tool_call_id")
    if ident is not None and (role != "tool" or not isinstance(ident, str)
                              or not 1 <= len(ident) <= 256):
        raise _fail(f"{where}.tool_call_id: an id of 1-256 characters, on tool messages only",
                    "messages")
    if role == "tool" and ident is None:
        raise _fail(f"{where}: a tool message needs the tool_call_id it answers", "messages")
    for name in ("reasoning_content", "reasoning"):
        text = item.get(name)
        if text is not None and (role != "assistant" or not isinstance(text, str)
                                 or len(text) > MAX_TEXT):
            raise _fail(f"{where}.{name}: text, on assistant messages only", "messages")


def message_from(item: dict[str, Any], role: Any, content: str) -> Message:
    """A checked message object as a contract Message (tool calls, tool result, reasoning)."""
    calls = tuple(
        ToolCall(c["id"], c["function"]["name"], c["function"].get("arguments") or "{}")
        for c in item.get("tool_calls") or ()
    )
    reasoning = item.get("reasoning_content") or item.get("reasoning") or ""
    return Message(role, content, tool_calls=calls, tool_call_id=item.get("tool_call_id"),
                   reasoning=reasoning)


def parse_tool_fields(body: dict[str, Any]) -> dict[str, Any]:
    """The ChatRequest fields from a checked body: tools, tool_choice, think."""
    fields: dict[str, Any] = {}
    tools = body.get("tools") or ()
    fields["tools"] = tuple(
        Tool(t["function"]["name"], t["function"].get("description") or "",
             t["function"].get("parameters") or {"type": "object", "properties": {}})
        for t in tools
    )
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        fields["tool_choice"] = choice["function"]["name"]
    elif isinstance(choice, str):
        fields["tool_choice"] = choice  # the contract refuses a choice the tools cannot meet
    think = (body.get("chat_template_kwargs") or {}).get("enable_thinking")
    effort = body.get("reasoning_effort")
    if think is None and effort is not None:
        think = effort != "none"
    if think is not None:
        fields["think"] = think
    return fields


def tool_call_delta(index: int, call: ToolCall) -> dict[str, Any]:
    """A streamed tool call, whole in one chunk (OpenAI's `delta.tool_calls[]` shape)."""
    return {"index": index, **call.to_openai()}


def answer_message(text: str, reasoning: str, calls: Sequence[ToolCall]) -> dict[str, Any]:
    """The non-streamed `choices[0].message`."""
    message: dict[str, Any] = {"role": "assistant", "content": text if text or not calls else None}
    if reasoning:
        message["reasoning_content"] = reasoning
    if calls:
        message["tool_calls"] = [c.to_openai() for c in calls]
    return message
