"""An Anthropic Messages API body (`POST /v1/messages`) checked at the edge of `tandem serve` and
turned into the contract's `ChatRequest`.

Every field is checked for type, range and size before the router sees it, and a field tandem
does not serve is refused by name (a 400 in Anthropic's error shape), as router.serve_checks
does for the OpenAI route. The mapping:

- `system` (a string or text blocks) → a leading system message;
- a user turn's `tool_result` blocks → contract `tool` messages (in order), its text → a user
  message after them; an assistant turn's `thinking` → `Message.reasoning`, its `tool_use`
  blocks → `ToolCall`s; a trailing assistant turn is continued (prefill);
- `tools[].input_schema` → `Tool.parameters`; `tool_choice` auto / any / tool / none → the
  contract's "auto" / "required" / name / "none";
- `thinking` enabled / disabled → `ChatRequest.think` True / False (adaptive: the model's
  default). `budget_tokens` is checked but not enforced: the contract has no reasoning budget
  (the answer as a whole stays within `max_tokens`);
- `stop_sequences` are not passed to the backend: router.serve_anthropic matches them itself,
  because Anthropic's `stop_reason` says which one ended the answer and the contract's Final
  does not.

The parsing also needs the shared chat fields, so it reuses router.serve_checks' JSON and
text checks.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from router.errors import TandemError
from router.protocol import ChatRequest, Message, Pin, Sampling, Tool, ToolCall
from router.serve_checks import MAX_MESSAGES, MAX_STOP, MAX_STOP_CHARS, MAX_TOKENS

__all__ = ["AnthropicRequest", "MessagesFieldError", "parse_messages_request"]

MAX_TEXT = 1_000_000
MAX_TOOLS = 128
MAX_BLOCKS = 1024
MAX_SCHEMA_DEPTH = 32
PINS: dict[str, Pin | None] = {"tandem": None, "tandem-local": "local", "tandem-cloud": "cloud"}


class MessagesFieldError(TandemError, ValueError):
    """A field of a Messages body tandem serve refuses (a 400, invalid_request_error)."""


@dataclass(frozen=True, slots=True)
class AnthropicRequest:
    """A checked Messages body: the contract request and what the answer's shape needs."""

    chat: ChatRequest
    model: str
    stream: bool
    stop_sequences: tuple[str, ...]


def _fail(message: str) -> MessagesFieldError:
    return MessagesFieldError(message)


def _text(value: Any, where: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str) or len(value) > limit:
        raise _fail(f"{where} must be a string of at most {limit} characters")
    return value


def _int(value: Any, where: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _fail(f"{where} must be an integer from {low} to {high}")
    return value


def _number(value: Any, where: str, low: float, high: float, *, open_low: bool = False) -> float:
    ok = not isinstance(value, bool) and isinstance(value, int | float)
    if ok:
        ok = (low < value if open_low else low <= value) and value <= high
    if not ok:
        span = f"({low}, {high}]" if open_low else f"[{low}, {high}]"
        raise _fail(f"{where} must be a number in {span}")
    return float(value)


def _obj(
    value: Any, where: str, allowed: set[str], required: frozenset[str] | set[str] = frozenset()
) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(f"{where} must be an object")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise _fail(f"{where}: unsupported field(s) {', '.join(unknown)}")
    missing = sorted(required - set(value))
    if missing:
        raise _fail(f"{where}: {', '.join(missing)} is required")
    return value


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_SCHEMA_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 64:
        raise _fail(f"{where} must be a name of 1-64 characters")
    try:
        Tool(value)
    except ValueError as exc:
        raise _fail(f"{where}: {exc}") from exc
    return value


# Blocks: `cache_control` and `citations` are Anthropic's caching and citation hints, sent by
# agents with their defaults; accepted and ignored (tandem keeps its own KV cache).
HINTS = {"cache_control", "citations"}


def _text_blocks(value: Any, where: str) -> str:
    """A string, or a list of text blocks, as one text."""
    if isinstance(value, str):
        return _text(value, where)
    if not isinstance(value, list) or len(value) > MAX_BLOCKS:
        raise _fail(f"{where} must be a string or a list of text blocks")
    parts = []
    for i, block in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(block, dict) or block.get("type") != "text":
            raise _fail(f"{at}: only text blocks are supported here")
        _obj(block, at, {"type", "text", *HINTS}, {"type", "text"})
        parts.append(_text(block["text"], f"{at}.text"))
    return "".join(parts)


def _user_turn(content: Any, where: str) -> list[Message]:
    if isinstance(content, str):
        return [Message("user", _text(content, f"{where}.content"))]
    if not isinstance(content, list) or not content or len(content) > MAX_BLOCKS:
        raise _fail(f"{where}.content must be a string or a non-empty list of blocks")
    results: list[Message] = []
    texts: list[str] = []
    for i, block in enumerate(content):
        at = f"{where}.content[{i}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            _obj(block, at, {"type", "text", *HINTS}, {"text"})
            texts.append(_text(block["text"], f"{at}.text"))
        elif kind == "tool_result":
            _obj(block, at, {"type", "tool_use_id", "content", "is_error", *HINTS},
                 {"tool_use_id"})  # fmt: skip
            ident = _text(block["tool_use_id"], f"{at}.tool_use_id", 256)
            if not ident:
                raise _fail(f"{at}.tool_use_id must not be empty")
            result = _text_blocks(block.get("content", ""), f"{at}.content")
            error = block.get("is_error")
            if error is not None and not isinstance(error, bool):
                raise _fail(f"{at}.is_error must be true or false")
            if error:  # the model reads the failure as the result, said as one
                result = f"error: {result}"
            results.append(Message("tool", result, tool_call_id=ident))
        else:
            raise _fail(f"{at}: a user turn holds text and tool_result blocks only")
    if texts:
        results.append(Message("user", "".join(texts)))
    return results


def _assistant_turn(content: Any, where: str) -> Message:
    if isinstance(content, str):
        return Message("assistant", _text(content, f"{where}.content"))
    if not isinstance(content, list) or len(content) > MAX_BLOCKS:
        raise _fail(f"{where}.content must be a string or a list of blocks")
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCall] = []
    for i, block in enumerate(content):
        at = f"{where}.content[{i}]"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            _obj(block, at, {"type", "text", *HINTS}, {"text"})
            texts.append(_text(block["text"], f"{at}.text"))
        elif kind == "thinking":
            _obj(block, at, {"type", "thinking", "signature", *HINTS}, {"thinking"})
            reasoning.append(_text(block["thinking"], f"{at}.thinking"))
            if "signature" in block:
                _text(block["signature"], f"{at}.signature", 4096)
        elif kind == "redacted_thinking":  # Anthropic's own encrypted reasoning: nothing to read
            _obj(block, at, {"type", "data", *HINTS})
        elif kind == "tool_use":
            _obj(block, at, {"type", "id", "name", "input", *HINTS}, {"id", "name", "input"})
            ident = _text(block["id"], f"{at}.id", 256)
            if not ident:
                raise _fail(f"{at}.id must not be empty")
            if not isinstance(block["input"], dict):
                raise _fail(f"{at}.input must be an object")
            arguments = json.dumps(block["input"], ensure_ascii=False)
            if len(arguments) > MAX_TEXT:
                raise _fail(f"{at}.input is too large")
            calls.append(ToolCall(ident, _name(block["name"], f"{at}.name"), arguments))
        else:
            raise _fail(f"{at}: an assistant turn holds text, thinking and tool_use blocks only")
    return Message("assistant", "".join(texts), tool_calls=tuple(calls),
                   reasoning="".join(reasoning))  # fmt: skip


def _messages(value: Any) -> list[Message]:
    if not isinstance(value, list) or not value:
        raise _fail("'messages' must be a non-empty list")
    if len(value) > MAX_MESSAGES:
        raise _fail(f"'messages' may hold at most {MAX_MESSAGES} messages")
    out: list[Message] = []
    for i, item in enumerate(value):
        where = f"messages[{i}]"
        _obj(item, where, {"role", "content"}, {"role", "content"})
        if item["role"] == "user":
            out += _user_turn(item["content"], where)
        elif item["role"] == "assistant":
            out.append(_assistant_turn(item["content"], where))
        else:
            raise _fail(f"{where}.role must be user or assistant (the system prompt is 'system')")
    return out


def _tools(value: Any) -> tuple[Tool, ...]:
    if not isinstance(value, list) or len(value) > MAX_TOOLS:
        raise _fail(f"'tools' must be a list of at most {MAX_TOOLS} tools")
    tools = []
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        _obj(tool, where, {"type", "name", "description", "input_schema", *HINTS},
             {"name", "input_schema"})  # fmt: skip
        if tool.get("type", "custom") not in ("custom", None):
            raise _fail(f"{where}: only client tools (type 'custom') are supported, not "
                        f"Anthropic's server tools")  # fmt: skip
        name = _name(tool["name"], f"{where}.name")
        description = _text(tool.get("description") or "", f"{where}.description", 10_000)
        schema = tool["input_schema"]
        if not isinstance(schema, dict) or _depth(schema) > MAX_SCHEMA_DEPTH:
            raise _fail(f"{where}.input_schema must be a JSON schema object")
        tools.append(Tool(name, description, schema))
    if len({t.name for t in tools}) != len(tools):
        raise _fail("two tools have the same name")
    return tuple(tools)


def _tool_choice(value: Any, tools: tuple[Tool, ...]) -> str:
    _obj(value, "tool_choice", {"type", "name", "disable_parallel_tool_use"}, {"type"})
    kind = value["type"]
    parallel = value.get("disable_parallel_tool_use")
    if parallel is not None and not isinstance(parallel, bool):
        raise _fail("tool_choice.disable_parallel_tool_use must be true or false")
    if kind in ("auto", "none") and "name" not in value:
        return str(kind)
    if kind == "any" and "name" not in value:
        if not tools:
            raise _fail("tool_choice 'any' needs at least one tool in 'tools'")
        return "required"
    if kind == "tool":
        name = _name(value.get("name"), "tool_choice.name")
        if name not in {t.name for t in tools}:
            raise _fail(f"tool_choice names {name!r}, which is not in 'tools'")
        return name
    raise _fail("tool_choice must be {type: auto | any | none} or {type: tool, name}")


def _thinking(value: Any, max_tokens: int) -> bool | None:
    _obj(value, "thinking", {"type", "budget_tokens", "display"}, {"type"})
    kind = value["type"]
    if kind == "enabled":
        budget = _int(value.get("budget_tokens"), "thinking.budget_tokens", 1, MAX_TOKENS)
        if budget >= max_tokens and max_tokens > 1:
            raise _fail("thinking.budget_tokens must be less than max_tokens")
        return True
    if "budget_tokens" in value:
        raise _fail("thinking.budget_tokens goes with type 'enabled' only")
    if kind == "disabled":
        return False
    if kind == "adaptive":
        return None  # the model's default
    raise _fail("thinking.type must be enabled, disabled or adaptive")


def _stop_sequences(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or len(value) > MAX_STOP:
        raise _fail(f"'stop_sequences' must be a list of at most {MAX_STOP} strings")
    for item in value:
        if not isinstance(item, str) or not 1 <= len(item) <= MAX_STOP_CHARS:
            raise _fail(f"each stop sequence must have 1 to {MAX_STOP_CHARS} characters")
    return tuple(value)


def _metadata(value: Any) -> None:
    _obj(value, "metadata", {"user_id"})
    if value.get("user_id") is not None:
        _text(value["user_id"], "metadata.user_id", 256)


FIELDS: set[str] = {
    "model", "messages", "system", "max_tokens", "stop_sequences", "temperature", "top_p",
    "stream", "tools", "tool_choice", "thinking", "metadata",
}  # fmt: skip


def parse_messages_request(body: Any, *, pin_header: str | None = None) -> AnthropicRequest:
    """A parsed JSON body → the checked request. Raises MessagesFieldError naming the field."""
    try:
        return _parse(body, pin_header)
    except MessagesFieldError:
        raise
    except (TypeError, ValueError) as exc:  # the contract's own checks (InvalidRequest)
        raise _fail(str(exc)) from exc


def _parse(body: Any, pin_header: str | None) -> AnthropicRequest:
    if not isinstance(body, dict):
        raise _fail("the body must be a JSON object")
    unknown = sorted(set(body) - FIELDS)
    if unknown:
        raise _fail(f"unsupported field(s): {', '.join(unknown)}")
    for required in ("model", "max_tokens", "messages"):
        if body.get(required) is None:
            raise _fail(f"'{required}' is required")
    model = _text(body["model"], "'model'", 256)
    if model not in PINS:
        raise _fail(f"model {model!r} is not served here; use tandem, tandem-local or "
                    "tandem-cloud")  # fmt: skip
    max_tokens = _int(body["max_tokens"], "'max_tokens'", 1, MAX_TOKENS)
    get: Callable[[str], Any] = body.get
    messages = _messages(body["messages"])
    system = get("system")
    if system is not None:
        text = _text_blocks(system, "'system'")
        if text:
            messages.insert(0, Message("system", text))
    continue_from = continue_reasoning = ""
    if messages[-1].role == "assistant":  # prefill: the answer continues this text
        partial = messages.pop()
        if partial.tool_calls:
            raise _fail("the last message is an assistant turn with tool_use: send the "
                        "tool_result in a user turn")  # fmt: skip
        continue_from, continue_reasoning = partial.content, partial.reasoning
    if not any(m.role in ("user", "tool") for m in messages):
        raise _fail("'messages' needs a user turn")
    tools = _tools(get("tools")) if get("tools") is not None else ()
    choice = _tool_choice(get("tool_choice"), tools) if get("tool_choice") is not None else "auto"
    think = _thinking(get("thinking"), max_tokens) if get("thinking") is not None else None
    stops = _stop_sequences(get("stop_sequences")) if get("stop_sequences") is not None else ()
    if get("metadata") is not None:
        _metadata(get("metadata"))
    stream = get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _fail("'stream' must be true or false")
    # Anthropic's temperature is 0-1; tandem's default stays greedy, as on the OpenAI route.
    temperature = get("temperature")
    temperature = 0.0 if temperature is None else _number(temperature, "'temperature'", 0, 1)
    top_p = get("top_p")
    top_p = 1.0 if top_p is None else _number(top_p, "'top_p'", 0, 1, open_low=True)
    pin: Pin | None = PINS[model]
    if pin_header in ("local", "cloud"):
        pin = "local" if pin_header == "local" else "cloud"
    chat = ChatRequest(
        tuple(messages),
        Sampling(max_tokens=max_tokens, temperature=temperature, top_p=top_p),
        continue_from=continue_from,
        continue_reasoning=continue_reasoning,
        pin=pin,
        tools=tools,
        tool_choice=choice,
        think=think,
    )
    return AnthropicRequest(chat, model, bool(stream), stops)
