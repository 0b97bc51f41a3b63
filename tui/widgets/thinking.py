"""A thinking model's reasoning in the transcript: one dimmed line, "▸ thinking (3.2 s)",
collapsed while it streams and after; a click, Enter or Space expands it to the reasoning text
(and back). While collapsed, the streamed reasoning is only collected: each piece repaints
the one-line label (its clock and a count of the pieces so far), never the transcript's
layout, so the answer below streams at full speed."""

from __future__ import annotations

import time
from typing import ClassVar

from textual import events
from textual.binding import Binding, BindingType
from textual.widgets import Static

__all__ = ["ThinkingBlock", "thinking_label"]

def thinking_label(
    seconds: float | None, *, expanded: bool, running: bool, pieces: int = 0
) -> str:
    arrow = "▾" if expanded else "▸"
    if running:
        return f"{arrow} thinking… {seconds or 0:.1f} s" + (f" · {pieces}" if pieces else "")
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
        self.pieces = 0
        """Reasoning pieces (about a token each) received while it runs: the label counts
        them, so each one shows at once, as the answer's tokens do."""
        self._started = time.monotonic()

    def on_mount(self) -> None:
        self._draw()

    @property
    def label(self) -> str:
        seconds = time.monotonic() - self._started if self.running else self.thinking_s
        return thinking_label(seconds, expanded=self.expanded, running=self.running,
                              pieces=self.pieces)

    def add(self, text: str) -> None:
        self.text += text
        self.pieces += 1
        # Collapsed, the block stays one line: a repaint of the label, no layout of the
        # transcript (which costs as much as the answer's own frames).
        self._draw(layout=self.expanded)

    def reset(self) -> None:
        """The answer started over elsewhere: its reasoning starts again."""
        self.text, self.running, self._started, self.pieces = "", True, time.monotonic(), 0
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

    def _draw(self, *, layout: bool = True) -> None:
        self.update(self.label + ("\n" + self.text if self.expanded and self.text else ""),
                    layout=layout)
        self.set_class(self.expanded, "expanded")
