"""What a generation request may ask of vLLM: an allowlist of fields, with caps from the profile.

vLLM accepts far more than a tenant should be able to send: `n=256` with `ignore_eos` saturates
the engine for everyone, `best_of`, `prompt_embeds`, `vllm_xargs`, `kv_transfer_params` and
`cache_salt` reach internals, image/audio parts make vLLM fetch URLs. The gateway forwards only
the fields below, each checked for type and range, and refuses any other with a 400 naming it.
`cache_salt` is never taken from the client: the gateway sets it per key owner (see app.py).

The body itself is parsed strictly first (`router.serve_checks.parse_json`): no NaN/Infinity,
no lone surrogates, which httpx would refuse to send on after the request was admitted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from router.serve_checks import FieldError, parse_json

__all__ = ["FieldError", "RequestCaps", "check_generation", "parse_json"]


@dataclass(frozen=True, slots=True)
class RequestCaps:
    """Per-request limits; the profile's [gateway] section sets them (max-n, ...)."""

    max_n: int = 4
    """Answers per request (n), and prompts per /v1/completions request."""
    max_tokens_cap: int = 4096
    """The largest max_tokens a request may ask for; also the default when it gives none."""
    max_messages: int = 512
    max_stop: int = 8
    max_tools: int = 64
    max_logprobs: int = 5

    def __post_init__(self) -> None:
        if min(self.max_n, self.max_tokens_cap, self.max_messages, self.max_stop) < 1:
            raise ValueError("request caps (max-n, max-tokens-cap, ...) must be at least 1")


Check = Callable[[Any, RequestCaps], None]


def _fail(name: str, what: str) -> FieldError:
    return FieldError(f"'{name}' must be {what}", name)


def _int(name: str, low: int, high: Callable[[RequestCaps], int] | int) -> Check:
    def check(value: Any, caps: RequestCaps) -> None:
        top = high(caps) if callable(high) else high
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= top:
            raise _fail(name, f"an integer from {low} to {top}")

    return check


def _number(name: str, low: float, high: float) -> Check:
    def check(value: Any, caps: RequestCaps) -> None:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            # isfinite() on an integer past a float's range raises OverflowError (a 500).
            or (isinstance(value, float) and not math.isfinite(value))
            or not low <= value <= high
        ):
            raise _fail(name, f"a number from {low} to {high}")

    return check


def _bool(name: str) -> Check:
    def check(value: Any, caps: RequestCaps) -> None:
        if not isinstance(value, bool):
            raise _fail(name, "true or false")

    return check


def _text(name: str, limit: int) -> Check:
    def check(value: Any, caps: RequestCaps) -> None:
        if not isinstance(value, str) or len(value) > limit:
            raise _fail(name, f"a string of at most {limit} characters")

    return check


def _is_one_of(value: Any, options: Iterable[str]) -> bool:
    """Membership that holds for any JSON value: a list or an object is never an option, and
    never reaches a set's hash (`["text"] in {"text"}` raises TypeError, a 500)."""
    return isinstance(value, str) and value in options


def _choice(name: str, *options: str) -> Check:
    def check(value: Any, caps: RequestCaps) -> None:
        if not _is_one_of(value, options):
            raise _fail(name, "one of " + ", ".join(options))

    return check


def _stop(value: Any, caps: RequestCaps) -> None:
    items = [value] if isinstance(value, str) else value
    if (
        not isinstance(items, list)
        or len(items) > caps.max_stop
        or not all(isinstance(s, str) and 0 < len(s) <= 512 for s in items)
    ):
        raise _fail("stop", f"a string or at most {caps.max_stop} strings of 1-512 characters")


def _stream_options(value: Any, caps: RequestCaps) -> None:
    # continuous_usage_stats: usage in every chunk, which the desktop client asks for so a
    # failover can continue an answer within max_tokens (tokens per chunk, not chunks).
    flags = ("include_usage", "continuous_usage_stats")
    if (
        not isinstance(value, dict)
        or set(value) - set(flags)
        or not all(isinstance(value.get(flag, False), bool) for flag in flags)
    ):
        raise _fail("stream_options", "{include_usage: bool, continuous_usage_stats: bool}")


_PART_TYPES = ("text",)
_MESSAGE_FIELDS = {
    "role", "content", "name", "tool_calls", "tool_call_id", "reasoning_content", "reasoning",
}  # fmt: skip
_ROLES = ("system", "developer", "user", "assistant", "tool")


def _content(value: Any, where: str) -> None:
    if value is None or isinstance(value, str):
        return
    if not isinstance(value, list):
        raise FieldError(f"{where}.content must be a string or a list of text parts", "messages")
    for part in value:
        # Only text: image/audio/video parts make vLLM fetch URLs on the tenant's behalf.
        if (
            not isinstance(part, dict)
            or not _is_one_of(part.get("type"), _PART_TYPES)
            or set(part) - {"type", "text"}
            or not isinstance(part.get("text"), str)
        ):
            raise FieldError(f"{where}.content: only text parts are accepted", "messages")


def _json_object(value: Any) -> bool:
    return isinstance(value, dict)


def _keys(value: dict[str, Any], allowed: set[str], where: str, param: str) -> None:
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise FieldError(f"{where}: field(s) not accepted: {', '.join(unknown)[:200]}", param)


def _function_name(value: Any, where: str, param: str) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        raise FieldError(f"{where} must be a name of 1-64 characters", param)


# Nested objects are forwarded as they are, so their shapes are checked like the top level:
# an unknown key or a wrong type inside them reaches vLLM's own parsing otherwise.
_CALL_KEYS = {"id", "type", "function"}
_CALL_FUNCTION_KEYS = {"name", "arguments"}


def _tool_calls(calls: Any, where: str, caps: RequestCaps) -> None:
    if not isinstance(calls, list) or len(calls) > caps.max_tools:
        raise FieldError(f"{where}.tool_calls must be a list of at most {caps.max_tools} "
                         "calls", "messages")  # fmt: skip
    for j, call in enumerate(calls):
        at = f"{where}.tool_calls[{j}]"
        if not isinstance(call, dict) or call.get("type", "function") != "function":
            raise FieldError(f"{at} must be {{id, type: 'function', function}}", "messages")
        _keys(call, _CALL_KEYS, at, "messages")
        if not isinstance(call.get("id"), str) or not 0 < len(call["id"]) <= 256:
            raise FieldError(f"{at}.id must be a string of 1-256 characters", "messages")
        function = call.get("function")
        if not isinstance(function, dict):
            raise FieldError(f"{at}.function must be {{name, arguments}}", "messages")
        _keys(function, _CALL_FUNCTION_KEYS, f"{at}.function", "messages")
        _function_name(function.get("name"), f"{at}.function.name", "messages")
        if not isinstance(function.get("arguments", ""), str):
            raise FieldError(f"{at}.function.arguments must be a JSON string", "messages")


def _messages(value: Any, caps: RequestCaps) -> None:
    if not isinstance(value, list) or not 0 < len(value) <= caps.max_messages:
        raise _fail("messages", f"a list of 1 to {caps.max_messages} messages")
    for i, item in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(item, dict):
            raise FieldError(f"{where} must be an object", "messages")
        unknown = sorted(set(item) - _MESSAGE_FIELDS)
        if unknown:
            raise FieldError(f"{where}: field(s) not accepted: {', '.join(unknown)}", "messages")
        if not _is_one_of(item.get("role"), _ROLES):
            raise FieldError(f"{where}.role must be one of {', '.join(_ROLES)}", "messages")
        _content(item.get("content"), where)
        for name in ("name", "tool_call_id", "reasoning_content", "reasoning"):
            if item.get(name) is not None and not isinstance(item[name], str):
                raise FieldError(f"{where}.{name} must be a string", "messages")
        if item.get("tool_calls") is not None:
            _tool_calls(item["tool_calls"], where, caps)


def _prompt(value: Any, caps: RequestCaps) -> None:
    if isinstance(value, str):
        return
    if (
        isinstance(value, list)
        and 0 < len(value) <= caps.max_n
        and all(isinstance(p, str) for p in value)
    ):
        return
    raise _fail("prompt", f"a string or a list of at most {caps.max_n} strings")


_FUNCTION_KEYS = {"name", "description", "parameters", "strict"}


def _tools(value: Any, caps: RequestCaps) -> None:
    if not isinstance(value, list) or len(value) > caps.max_tools:
        raise _fail("tools", f"a list of at most {caps.max_tools} function tools")
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise FieldError(f"{where} must be {{type: 'function', function: {{...}}}}", "tools")
        _keys(tool, {"type", "function"}, where, "tools")
        function = tool.get("function")
        if not isinstance(function, dict):
            raise FieldError(f"{where}.function must be {{name, description, parameters}}",
                             "tools")  # fmt: skip
        _keys(function, _FUNCTION_KEYS, f"{where}.function", "tools")
        _function_name(function.get("name"), f"{where}.function.name", "tools")
        if not isinstance(function.get("description", ""), str):
            raise FieldError(f"{where}.function.description must be a string", "tools")
        if not isinstance(function.get("parameters", {}), dict):
            raise FieldError(f"{where}.function.parameters must be a JSON schema object",
                             "tools")  # fmt: skip
        if not isinstance(function.get("strict", False), bool):
            raise FieldError(f"{where}.function.strict must be true or false", "tools")


def _tool_choice(value: Any, caps: RequestCaps) -> None:
    if _is_one_of(value, ("none", "auto", "required")):
        return
    named = _json_object(value) and value.get("type") == "function"
    if named and isinstance(value.get("function"), dict):
        _keys(value, {"type", "function"}, "tool_choice", "tool_choice")
        _keys(value["function"], {"name"}, "tool_choice.function", "tool_choice")
        _function_name(value["function"].get("name"), "tool_choice.function.name",
                       "tool_choice")  # fmt: skip
        return
    raise _fail("tool_choice", "none, auto, required or {type: 'function', function: {name}}")


def _response_format(value: Any, caps: RequestCaps) -> None:
    if (
        not _json_object(value)
        or not _is_one_of(value.get("type"), ("text", "json_object"))
        or set(value) - {"type"}
    ):
        raise _fail("response_format", '{"type": "text"} or {"type": "json_object"}')


def _template_kwargs(value: Any, caps: RequestCaps) -> None:
    if (
        not _json_object(value)
        or set(value) - {"enable_thinking"}
        or not isinstance(value.get("enable_thinking", False), bool)
    ):
        raise _fail("chat_template_kwargs", "{enable_thinking: bool}")


def _logprobs_chat(value: Any, caps: RequestCaps) -> None:
    _bool("logprobs")(value, caps)


COMMON: dict[str, Check] = {
    "model": _text("model", 256),
    "stream": _bool("stream"),
    "stream_options": _stream_options,
    "max_tokens": _int("max_tokens", 1, lambda c: c.max_tokens_cap),
    "min_tokens": _int("min_tokens", 0, lambda c: c.max_tokens_cap),
    "n": _int("n", 1, lambda c: c.max_n),
    "temperature": _number("temperature", 0.0, 2.0),
    "top_p": _number("top_p", 1e-9, 1.0),
    "top_k": _int("top_k", -1, 1000),
    "min_p": _number("min_p", 0.0, 1.0),
    "presence_penalty": _number("presence_penalty", -2.0, 2.0),
    "frequency_penalty": _number("frequency_penalty", -2.0, 2.0),
    "repetition_penalty": _number("repetition_penalty", 0.01, 2.0),
    "seed": _int("seed", -(2**63), 2**63 - 1),
    "stop": _stop,
    # Bounded by max_tokens_cap like any answer, so it costs no more than a long one.
    "ignore_eos": _bool("ignore_eos"),
    "skip_special_tokens": _bool("skip_special_tokens"),
    "user": _text("user", 256),
    # Accepted and dropped: the gateway sets its own per tenant.
    "cache_salt": _text("cache_salt", 1024),
}
CHAT: dict[str, Check] = {
    **COMMON,
    "messages": _messages,
    "max_completion_tokens": _int("max_completion_tokens", 1, lambda c: c.max_tokens_cap),
    "logprobs": _logprobs_chat,
    "top_logprobs": _int("top_logprobs", 0, lambda c: c.max_logprobs),
    "tools": _tools,
    "tool_choice": _tool_choice,
    "parallel_tool_calls": _bool("parallel_tool_calls"),
    "response_format": _response_format,
    "chat_template_kwargs": _template_kwargs,
    "include_reasoning": _bool("include_reasoning"),
    "reasoning_effort": _choice("reasoning_effort", "none", "minimal", "low", "medium", "high"),
    "add_generation_prompt": _bool("add_generation_prompt"),
    "continue_final_message": _bool("continue_final_message"),
}
COMPLETION: dict[str, Check] = {
    **COMMON,
    "prompt": _prompt,
    "echo": _bool("echo"),
    "logprobs": _int("logprobs", 0, lambda c: c.max_logprobs),
}


def check_generation(body: Any, path: str, caps: RequestCaps) -> dict[str, Any]:
    """The body to forward: only allowlisted fields, each valid and within the caps (`null`
    counts as absent). Raises FieldError naming the first field that is not."""
    if not isinstance(body, dict):
        raise FieldError("the request body must be a JSON object")
    chat = path.endswith("/chat/completions")
    table = CHAT if chat else COMPLETION
    refused = sorted(k for k in body if k not in table)
    if refused:
        raise FieldError(f"field(s) not accepted here: {', '.join(refused)}", refused[0])
    required = "messages" if chat else "prompt"
    if body.get(required) is None:
        raise FieldError(f"'{required}' is required", required)
    out: dict[str, Any] = {}
    for name, value in body.items():
        if value is None:
            continue
        table[name](value, caps)
        if name != "cache_salt":
            out[name] = value
    answers = out.get("n", 1) * (len(out["prompt"]) if isinstance(out.get("prompt"), list) else 1)
    if answers > caps.max_n:
        raise FieldError(f"n × prompts may be at most {caps.max_n}", "n")
    limit = out.get("max_completion_tokens", out.get("max_tokens"))
    if limit is None:
        out["max_tokens"] = caps.max_tokens_cap  # vLLM's default is the whole context
    if out.get("min_tokens", 0) > (limit or caps.max_tokens_cap):
        raise FieldError("'min_tokens' must not exceed max_tokens", "min_tokens")
    return out
