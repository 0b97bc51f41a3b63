"""A tool call the model made, as a card in the transcript: the function, its arguments and,
once known, its result."""

from __future__ import annotations

import json

from textual.widgets import Static

__all__ = ["ToolCallCard", "card_text"]


def card_text(name: str, arguments: str, result: str | None = None) -> str:
    try:
        args = json.dumps(json.loads(arguments), ensure_ascii=False)
    except ValueError:
        args = arguments  # shown as the model wrote it
    text = f"⚙ {name}({args})"
    return text + (f"\n→ {result}" if result is not None else "\n→ waiting for the result")


class ToolCallCard(Static):
    def __init__(self, call_id: str, name: str, arguments: str) -> None:
        super().__init__(card_text(name, arguments), classes="toolcall", markup=False)
        self.call_id, self.tool_name, self.arguments = call_id, name, arguments
        self.result: str | None = None

    def set_result(self, result: str) -> None:
        self.result = result
        self.update(card_text(self.tool_name, self.arguments, result))
