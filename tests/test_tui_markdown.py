"""Streamed Markdown: appended piece by piece, and the final render is complete (the last
tokens are there, code blocks are not blank)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest
from textual.widgets import Markdown
from textual.widgets.markdown import MarkdownBlock, MarkdownFence

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

ANSWER = (
    "Here is a function:\n\n"
    "```python\ndef add(a, b):\n    return a + b\n```\n\n"
    "- it adds\n- it returns\n\n"
    "and the **last words**."
)


class MarkdownBackend:
    """Streams a fixed Markdown answer two characters at a time. The tiny test model cannot
    write code blocks, which is what this checks the rendering of."""

    name = "local"
    ready = True

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        for i in range(0, len(ANSWER), 2):
            await asyncio.sleep(0.002)
            yield TextDelta(ANSWER[i : i + 2])
        yield Final("stop", Usage(5, len(ANSWER) // 2), "local", "markdown")

    async def health(self) -> Health:
        return Health(True)

    def capabilities(self) -> Capabilities:
        return Capabilities("markdown", 4096)


async def test_the_final_render_has_every_token_and_the_code_block(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    app = make_app(MarkdownBackend(), hybrid=False)
    async with app.run_test(size=(110, 40)) as pilot:
        stored = await answer(pilot, "Write code.")
        assert stored.content == ANSWER
        markdown = answer_views(app)[-1].query_one(Markdown)
        assert markdown.source == ANSWER
        fences = list(markdown.query(MarkdownFence))
        assert len(fences) == 1
        assert fences[0].code.strip() == "def add(a, b):\n    return a + b"
        last_block = list(markdown.query(MarkdownBlock))[-1]
        assert "the last words." in last_block._content.plain
