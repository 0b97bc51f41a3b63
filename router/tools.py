"""Tools in the contract: what a request offers the model (`Tool`), what the model calls
(`ToolCall`, also a stream event) and how the request lets it choose (`tool_choice`).

The shapes follow OpenAI's chat API, which vLLM, mlx-lm's server and every editor speak:
a tool is a function with a JSON-schema `parameters` object; a call has an id, the function's
name and its arguments as JSON text. Re-exported by `router.protocol`; imports nothing heavy.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from router.errors import InvalidRequest

__all__ = ["TOOL_CHOICES", "Tool", "ToolCall", "check_tool_choice"]

TOOL_CHOICES = ("auto", "none", "required")
"""`tool_choice` values besides a tool's name (which forces that tool)."""
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")  # OpenAI's rule for function names


@dataclass(frozen=True, slots=True)
class Tool:
    """A function the model may call."""

    name: str
    description: str = ""
    parameters: Mapping[str, Any] = field(
        default_factory=lambda: {"type": "object", "properties": {}}
    )
    """A JSON schema for the arguments (an object)."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise InvalidRequest(
                f"tool name {self.name!r} must be 1-64 letters, digits, '_', '.' or '-'"
            )
        if not isinstance(self.parameters, Mapping):
            raise InvalidRequest(f"tool {self.name}: parameters must be a JSON object")

    def to_openai(self) -> dict[str, Any]:
        function: dict[str, Any] = {"name": self.name}
        if self.description:
            function["description"] = self.description
        function["parameters"] = dict(self.parameters)  # OpenAI's order: the template's JSON
        return {"type": "function", "function": function}


@dataclass(frozen=True, slots=True)
class ToolCall:
    """The model calls a tool. As a stream event it arrives whole (id, name and arguments
    complete), after any reasoning and text before it; the answer then ends with
    finish_reason "tool_calls" and the caller sends the result back as a `tool` message."""

    id: str
    name: str
    arguments: str = "{}"
    """The arguments as JSON text (normally an object), exactly as the model wrote them."""

    def __post_init__(self) -> None:
        if not self.id or not self.name:
            raise InvalidRequest("a tool call needs an id and a name")
        if not isinstance(self.arguments, str):
            raise InvalidRequest(f"tool call {self.id}: arguments must be JSON text")

    def parsed_arguments(self) -> Any:
        """The arguments decoded; None when they are not valid JSON."""
        try:
            return json.loads(self.arguments)
        except ValueError:
            return None

    def to_openai(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }


def check_tool_choice(choice: str, tools: Sequence[Tool]) -> None:
    """Refuse a `tool_choice` the offered tools cannot satisfy."""
    names = {t.name for t in tools}
    if len(names) != len(tools):
        raise InvalidRequest("two tools have the same name")
    if choice in TOOL_CHOICES:
        if choice == "required" and not tools:
            raise InvalidRequest("tool_choice 'required' needs at least one tool")
        return
    if choice not in names:
        raise InvalidRequest(
            f"tool_choice must be auto, none, required or the name of an offered tool, "
            f"not {choice!r}"
        )
