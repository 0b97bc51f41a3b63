"""A tool call the model made, as a card in the transcript: the function, its arguments and,
once known, its result."""

from __future__ import annotations

import json

from textual.widgets import Static

__all__ = ["ToolCallCard", "card_text"]

RESULT_SHOWN = 600
"""Characters of a result on the card (the model reads the whole result)."""


def card_text(name: str, arguments: str, result: str | None = None) -> str:
    try:
        args = json.dumps(json.loads(arguments), ensure_ascii=False)
    except ValueError:
        args = arguments  # shown as the model wrote it
    text = f"⚙ {name}({args})"
    if result is None:
        return text + "\n→ waiting for the result"
    shown = result if len(result) <= RESULT_SHOWN else result[:RESULT_SHOWN] + " …"
    return text + f"\n→ {shown}"


class ToolCallCard(Static):
    def __init__(
        self, call_id: str, name: str, arguments: str, result: str | None = None
    ) -> None:
        super().__init__(card_text(name, arguments, result), classes="toolcall", markup=False)
        self.call_id, self.tool_name, self.arguments = call_id, name, arguments
        self.result = result

    def set_result(self, result: str) -> None:
        self.result = result
        self.update(card_text(self.tool_name, self.arguments, result))
