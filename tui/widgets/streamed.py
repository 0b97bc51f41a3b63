"""An answer's Markdown while it streams, kept cheap to draw however long it grows.

Why not Textual's `Markdown` widget: it makes a widget per block (lists and code fences are
containers of several), and Textual arranges every widget on the screen on each frame that
changes a size (`Compositor.reflow` walks the whole tree). A 1,000-token answer became ~600
widgets, frames grew to ~70 ms, and the screen fell 150-250 ms behind a 200 tokens/s stream.

Here an answer is a few `Static` pieces rendered with Rich's Markdown (code highlighted by
Pygments): the *open* piece holds the block being written, and each finished block moves into
the last *sealed* piece, which takes up to `RUN_BLOCKS` blocks before a new one starts. So a
token re-parses one block (and a finished block at most `RUN_BLOCKS` blocks), never the whole
answer; sealed pieces keep their height per width cached, and a token that only extends the
last line repaints the open piece without a layout.
"""

from __future__ import annotations

import re

from rich.console import Console, ConsoleOptions, RenderResult
from rich.markdown import Markdown
from rich.segment import Segment
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Static

__all__ = ["CODE_THEME", "RUN_BLOCKS", "StreamedMarkdown"]

RUN_BLOCKS = 8
"""Finished blocks per sealed piece: more means fewer widgets to arrange each frame, fewer
means less to render again when a block finishes."""

CODE_THEME = "monokai"

_FENCE = re.compile(r"^ {0,3}(```|~~~)", re.MULTILINE)
_NEXT_BLOCK = re.compile(r"\n\n+(?=\S)")


class _RenderedOnce:
    """The Markdown of `text` as a Rich renderable, parsed and rendered once per width.
    Textual draws a widget twice per frame (to measure it, then to paint it) with the same
    options, and a piece is measured again when text is added: each costs one render."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._rendered: tuple[object, list[Segment]] | None = None

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        key = (
            options.max_width,
            options.justify,
            options.overflow,
            options.no_wrap,
            options.highlight,
            options.markup,
            console.color_system,
        )
        if self._rendered is None or self._rendered[0] != key:
            markdown = Markdown(self.text, code_theme=CODE_THEME)
            self._rendered = (key, list(console.render(markdown, options)))
        yield from self._rendered[1]


class _Piece(Static):
    """A run of whole Markdown blocks of one answer (or, last, the block being written)."""

    def __init__(self, text: str = "") -> None:
        super().__init__(classes="piece")
        self.text = ""
        self.blocks = 0
        self.show(text)

    def show(self, text: str) -> None:
        self.text = text
        self.set_class(not text, "-empty")
        self.update(_RenderedOnce(text), layout=False)
        # A token that only extends the last line repaints this piece alone; a layout (and
        # the scroll that follows it) only when the height changes.
        width, height = self.size
        if not width or self.get_content_height(self.size, self.size, width) != height:
            self.refresh(layout=True)


class StreamedMarkdown(Vertical):
    """Markdown that is written piece by piece (`write`) and finished once (`finish`)."""

    DEFAULT_CSS = """
    StreamedMarkdown { height: auto; }
    StreamedMarkdown > .piece { height: auto; margin-top: 1; }
    StreamedMarkdown > .piece:first-child { margin-top: 0; }
    StreamedMarkdown > .piece.-empty { display: none; }
    """

    def __init__(self, source: str = "", *, classes: str | None = None) -> None:
        super().__init__(classes=classes)
        self._initial = source

    def compose(self) -> ComposeResult:
        yield _Piece(self._initial)

    @property
    def source(self) -> str:
        """The whole text shown, all pieces together."""
        return "".join(piece.text for piece in self.query_children(_Piece))

    async def write(self, text: str) -> None:
        """Append streamed text."""
        opened = self.query_children(_Piece).last()
        # A block ends where a blank line is followed by a line that starts flush left
        # (indented text may continue a list item), outside any code fence. Only the text
        # that just arrived (and the newlines before it) can hold a new one.
        start = len(opened.text.rstrip("\n"))
        pending = opened.text + text
        while (end := _block_end(pending, start)) is not None:
            await self._seal(pending[:end])
            pending, start = pending[end:], 0
        opened.show(pending)

    async def finish(self, text: str) -> None:
        """The answer ended: if the pieces do not add up to `text` exactly, show it again as
        one piece (the final render is always complete)."""
        if self.source != text:
            await self.remove_children()
            await self.mount(_Piece(text))

    async def _seal(self, block: str) -> None:
        """Add a finished block to the last sealed piece (a new one when that one is full)."""
        pieces = list(self.query_children(_Piece))
        sealed = pieces[-2] if len(pieces) > 1 else None
        if sealed is None or sealed.blocks >= RUN_BLOCKS:
            sealed = _Piece()
            await self.mount(sealed, before=pieces[-1])
        sealed.show(sealed.text + block)
        sealed.blocks += 1


def _block_end(text: str, start: int) -> int | None:
    """Where the first block that ends at or after `start` ends (the next one begins)."""
    for match in _NEXT_BLOCK.finditer(text, start):
        if len(_FENCE.findall(text, 0, match.end())) % 2 == 0:
            return match.end()
    return None
