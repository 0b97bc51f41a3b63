"""The message input (bottom of the chat): multi-line; Enter sends, Alt+Enter or Ctrl+J adds a
new line."""

from __future__ import annotations

from dataclasses import dataclass

from textual import events
from textual.message import Message
from textual.widgets import TextArea

__all__ = ["NEWLINE_KEYS", "Composer"]

NEWLINE_KEYS = ("alt+enter", "ctrl+j", "shift+enter")
"""Keys that insert a line break (terminals differ in which of these they can send)."""


class Composer(TextArea):
    """Multi-line input; Enter posts `Composer.Submitted` with the text and clears it."""

    @dataclass
    class Submitted(Message):
        composer: Composer
        text: str

    def __init__(self, **kwargs: object) -> None:
        super().__init__(
            soft_wrap=True,
            show_line_numbers=False,
            tab_behavior="focus",
            **kwargs,  # type: ignore[arg-type]
        )

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            text = self.text.strip()
            if text:
                self.clear()
                self.post_message(self.Submitted(self, text))
            return
        if event.key in NEWLINE_KEYS:
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        await super()._on_key(event)
