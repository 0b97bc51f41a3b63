"""A thinking model's reasoning in the transcript: one dimmed line, "▸ thinking (3.2 s)",
collapsed while it streams and after; a click, Enter or Space expands it to the reasoning text
(and back). While collapsed, the streamed reasoning is only collected, not rendered: the
answer below it streams at full speed."""

from __future__ import annotations

import time
from typing import ClassVar

from textual import events
from textual.binding import Binding, BindingType
from textual.widgets import Static

__all__ = ["ThinkingBlock", "thinking_label"]

LABEL_EVERY_S = 0.2
"""How often the label's running clock is redrawn while the model thinks."""


def thinking_label(seconds: float | None, *, expanded: bool, running: bool) -> str:
    arrow = "▾" if expanded else "▸"
    if running:
        return f"{arrow} thinking… {seconds or 0:.1f} s"
    return f"{arrow} thinking ({seconds:.1f} s)" if seconds is not None else f"{arrow} thinking"


class ThinkingBlock(Static, can_focus=True):
    """The reasoning of one answer. `add()` while it streams, `done()` when it ends."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("enter", "expand", "expand/collapse", show=False),
        Binding("space", "expand", "expand/collapse", show=False),
    ]

    def __init__(self, text: str = "", thinking_s: float | None = None) -> None:
        super().__init__("", classes="thinking", markup=False)
        self.text = text
        self.thinking_s = thinking_s
        self.expanded = False
        self.running = not text and thinking_s is None
        self._started = time.monotonic()
        self._drawn_at = 0.0

    def on_mount(self) -> None:
        self._draw()

    @property
    def label(self) -> str:
        seconds = time.monotonic() - self._started if self.running else self.thinking_s
        return thinking_label(seconds, expanded=self.expanded, running=self.running)

    def add(self, text: str) -> None:
        self.text += text
        now = time.monotonic()
        if self.expanded or now - self._drawn_at >= LABEL_EVERY_S:
            self._draw()

    def reset(self) -> None:
        """The answer started over elsewhere: its reasoning starts again."""
        self.text, self.running, self._started = "", True, time.monotonic()
        self._draw()

    def done(self, thinking_s: float | None = None) -> None:
        if not self.running:
            return
        self.running = False
        self.thinking_s = thinking_s if thinking_s is not None else (
            time.monotonic() - self._started
        )
        self._draw()

    def action_expand(self) -> None:
        """Expand, or collapse when expanded."""
        self.expanded = not self.expanded
        self._draw()

    def on_click(self, event: events.Click) -> None:
        event.stop()  # the answer around it opens its route record on a click
        self.action_expand()

    def _draw(self) -> None:
        self._drawn_at = time.monotonic()
        self.update(self.label + ("\n" + self.text if self.expanded and self.text else ""))
        self.set_class(self.expanded, "expanded")
