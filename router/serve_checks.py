"""Every field of a chat-completions body checked at the edge of `tandem serve`, before the router
or an engine sees it: types, ranges and sizes, and unknown fields refused.

One bad field must cost only its own request: `"seed": "x"` once reached `mx.random.seed` inside
the engine's batch and failed every answer running beside it. Python's `json` also accepts
`NaN`, `Infinity` and lone surrogates (`"\\ud800"`), which no JSON encoder downstream will send
on; `parse_json` refuses them.

`FIELDS` is the table of what is accepted; a field not in it is a 400 naming it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from typing import Any

from router.errors import TandemError
from router.serve_tools import MESSAGE_TOOL_FIELDS, TOOL_FIELDS, check_message_tools

__all__ = ["MAX_MESSAGES", "FieldError", "check_chat_body", "parse_json"]

MAX_MESSAGES = 2048
MAX_STOP = 16
MAX_STOP_CHARS = 512
MAX_TOKENS = 131072
SEED_LIMIT = 2**63  # vLLM takes an int64, MLX an unsigned 64-bit seed: [0, 2**63) fits both


class FieldError(TandemError, ValueError):
    """A body field tandem cannot accept; `param` names it (OpenAI's error `param`)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


def _no_constant(name: str) -> Any:
    raise FieldError(f"{name} is not a JSON number")


def _check_strings(value: Any, depth: int = 0) -> None:
    if depth > 64:
        raise FieldError("the JSON nests too deeply")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise FieldError("the body holds an unpaired surrogate (\\ud800-\\udfff)") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key, depth + 1)
            _check_strings(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_strings(item, depth + 1)


def parse_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, no lone surrogates, bounded nesting."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise FieldError("the body is not UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except FieldError:
        raise
    except (ValueError, RecursionError):
        raise FieldError("the body is not valid JSON") from None
    _check_strings(value)
    return value


# --- field checks ---------------------------------------------------------------------------


def _int(name: str, low: int, high: int) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise FieldError(f"'{name}' must be an integer from {low} to {high}", name)

    return check


def _number(name: str, low: float, high: float, *, open_low: bool = False) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        ok = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
        if ok:
            ok = (low < value if open_low else low <= value) and value <= high
        if not ok:
            span = f"({low}, {high}]" if open_low else f"[{low}, {high}]"
            raise FieldError(f"'{name}' must be a number in {span}", name)

    return check


def _bool(name: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not isinstance(value, bool):
            raise FieldError(f"'{name}' must be true or false", name)

    return check


def _text(name: str, limit: int) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not isinstance(value, str) or len(value) > limit:
            raise FieldError(f"'{name}' must be a string of at most {limit} characters", name)

    return check


def _stop(value: Any) -> None:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or len(items) > MAX_STOP:
        raise FieldError(f"'stop' must be a string or a list of at most {MAX_STOP} strings", "stop")
    for item in items:
        if not isinstance(item, str) or not 1 <= len(item) <= MAX_STOP_CHARS:
            raise FieldError(
                f"each 'stop' string must have 1 to {MAX_STOP_CHARS} characters", "stop"
            )


def _stream_options(value: Any) -> None:
    if not isinstance(value, dict) or set(value) - {"include_usage"}:
        raise FieldError("'stream_options' may only hold include_usage", "stream_options")
    if not isinstance(value.get("include_usage", False), bool):
        raise FieldError("'stream_options.include_usage' must be true or false", "stream_options")


def _n(value: Any) -> None:
    if value != 1 or isinstance(value, bool):
        raise FieldError("'n' must be 1: tandem serve gives one answer per request", "n")


def _content(value: Any, where: str) -> None:
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, list):
        raise FieldError(f"{where}.content must be a string or a list of text parts", "messages")
    for part in value:
        if not isinstance(part, dict) or part.get("type") != "text":
            raise FieldError(f"{where}.content: only text parts are supported", "messages")
        if set(part) - {"type", "text"} or not isinstance(part.get("text"), str):
            raise FieldError(f"{where}.content: a text part is {{type, text}}", "messages")


MESSAGE_FIELDS = {"role", "content", "name", *MESSAGE_TOOL_FIELDS}
ROLES = ("system", "developer", "user", "assistant", "tool")


def _messages(value: Any) -> None:
    if not isinstance(value, list) or not value:
        raise FieldError("'messages' must be a non-empty list", "messages")
    if len(value) > MAX_MESSAGES:
        raise FieldError(f"'messages' may hold at most {MAX_MESSAGES} messages", "messages")
    for i, item in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(item, dict):
            raise FieldError(f"{where} must be an object with 'role' and 'content'", "messages")
        unknown = sorted(set(item) - MESSAGE_FIELDS)
        if unknown:
            raise FieldError(f"{where}: unsupported field(s) {', '.join(unknown)}", "messages")
        if item.get("role") not in ROLES:
            raise FieldError(f"{where}.role must be one of {', '.join(ROLES)}", "messages")
        _content(item.get("content"), where)
        check_message_tools(item, where)  # tool calls, tool results, reasoning
        if "name" in item:
            _text(f"{where}.name", 256)(item["name"])


def _ignored_penalty(name: str) -> Callable[[Any], None]:
    return _number(name, -2.0, 2.0)


FIELDS: dict[str, Callable[[Any], None]] = {
    "model": _text("model", 256),
    "messages": _messages,
    "max_tokens": _int("max_tokens", 1, MAX_TOKENS),
    "max_completion_tokens": _int("max_completion_tokens", 1, MAX_TOKENS),
    "temperature": _number("temperature", 0.0, 2.0),
    "top_p": _number("top_p", 0.0, 1.0, open_low=True),
    "stop": _stop,
    "seed": _int("seed", 0, SEED_LIMIT - 1),
    "stream": _bool("stream"),
    "stream_options": _stream_options,
    # Sent by many OpenAI clients with their defaults; accepted, and have no effect here.
    "n": _n,
    "user": _text("user", 256),
    "presence_penalty": _ignored_penalty("presence_penalty"),
    "frequency_penalty": _ignored_penalty("frequency_penalty"),
    **TOOL_FIELDS,  # tools, tool_choice, the thinking switch (router/serve_tools.py)
}


def check_chat_body(body: Any) -> dict[str, Any]:
    """The body, if every field is one tandem serve accepts with a valid value; `null` counts
    as absent. Raises FieldError naming the first bad field."""
    if not isinstance(body, dict):
        raise FieldError("the body must be a JSON object")
    unknown = sorted(k for k in body if k not in FIELDS)
    if unknown:
        raise FieldError(f"unsupported field(s): {', '.join(unknown)}", unknown[0])
    if "messages" not in body:
        raise FieldError("'messages' is required", "messages")
    for name, value in body.items():
        if value is not None or name == "messages":
            FIELDS[name](value)
    return body
