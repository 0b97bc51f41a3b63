"""Streamed Markdown: appended piece by piece, and the final render is complete (the last
tokens are there, code blocks are not blank and are highlighted); a long answer is split into
pieces only between whole blocks, never inside a code block or a list item."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest
from textual.geometry import Region
from textual.strip import Strip

from router.protocol import (
    Capabilities,
    ChatRequest,
    Final,
    Health,
    StreamEvent,
    TextDelta,
    Usage,
)
from tests.tui_support import answer, answer_views, make_app
from tui.widgets.streamed import RUN_BLOCKS, StreamedMarkdown

ANSWER = (
    "Here is a function:\n\n"
    "```python\ndef add(a, b):\n    return a + b\n```\n\n"
    "- it adds\n- it returns\n\n"
    "and the **last words**."
)

# Blank lines inside a code block and an indented continuation of a list item: neither may
# start a new piece, or the code would be cut in two and the continuation become code.
BLOCKS = [
    "```python\ndef first():\n    pass\n\n\ndef second():\n    pass\n```",
    "- an item\n\n  its second paragraph, indented",
    *[f"Paragraph number {i} of a long answer." for i in range(3 * RUN_BLOCKS)],
    "the very **end**",
]
LONG_ANSWER = "\n\n".join(BLOCKS)


class MarkdownBackend:
    """Streams a fixed Markdown answer two characters at a time. The tiny test model cannot
    write code blocks, which is what this checks the rendering of."""

    name = "local"
    ready = True

    def __init__(self, text: str) -> None:
        self.text = text

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        for i in range(0, len(self.text), 2):
            await asyncio.sleep(0.002)
            yield TextDelta(self.text[i : i + 2])
        yield Final("stop", Usage(5, len(self.text) // 2), "local", "markdown")

    async def health(self) -> Health:
        return Health(True)

    def capabilities(self) -> Capabilities:
        return Capabilities("markdown", 4096)

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def rendered(markdown: StreamedMarkdown) -> list[Strip]:
    """The lines the answer's pieces draw on screen, top to bottom."""
    lines: list[Strip] = []
    for piece in markdown.children:
        if piece.display:
            width, height = piece.size
            lines += piece.render_lines(Region(0, 0, width, height))
    return lines


async def test_the_final_render_has_every_token_and_the_code_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    app = make_app(MarkdownBackend(ANSWER))
    async with app.run_test(size=(110, 40)) as pilot:
        stored = await answer(pilot, "Write code.")
        await pilot.pause()
        assert stored.content == ANSWER
        markdown = answer_views(app)[-1].query_one(StreamedMarkdown)
        assert markdown.source == ANSWER
        lines = rendered(markdown)
        text = "\n".join(line.text for line in lines)
        assert "def add(a, b):" in text and "return a + b" in text
        assert "• it adds" in text and "• it returns" in text
        assert "the last words." in text and "**" not in text
        code = next(line for line in lines if "return a + b" in line.text)
        colours = {seg.style.color for seg in code if seg.text.strip() and seg.style}
        assert len(colours) > 1, "the code block is not highlighted"


async def test_a_long_answer_is_split_only_between_whole_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    app = make_app(MarkdownBackend(LONG_ANSWER))
    async with app.run_test(size=(110, 40)) as pilot:
        await answer(pilot, "Write a long answer.")
        await pilot.pause()
        markdown = answer_views(app)[-1].query_one(StreamedMarkdown)
        assert markdown.source == LONG_ANSWER
        pieces = [piece.text for piece in markdown.children if getattr(piece, "text", "")]
        assert len(pieces) >= 3  # sealed runs of RUN_BLOCKS blocks, then the open one
        assert pieces[0].startswith(BLOCKS[0] + "\n\n" + BLOCKS[1] + "\n\n")
        for piece in pieces:
            assert piece.count("```") % 2 == 0
        assert all(piece.endswith("\n\n") for piece in pieces[:-1])
        text = "\n".join(line.text for line in rendered(markdown))
        assert "its second paragraph, indented" in text
        assert "the very end" in text
