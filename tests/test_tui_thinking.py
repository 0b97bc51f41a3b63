"""The chat with a thinking model (the Qwen3-shaped test model on the real local engine):
the reasoning streams into a dimmed, collapsed "thinking (… s)" line that a click or Enter
expands, it is stored apart from the answer (answer_parts), and a tool call shows as a card.
Shapes only: no assertion on what the trained model says."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from router.protocol import ChatRequest, StreamEvent, Tool
from scripts.thinkingmodel import WEATHER_TOOL
from tests.tui_support import answer, answer_views, make_app, until
from tui.store_parts import AnswerParts
from tui.widgets.streamed import StreamedMarkdown
from tui.widgets.thinking import ThinkingBlock, thinking_label
from tui.widgets.toolcard import ToolCallCard

pytestmark = pytest.mark.mlx


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    return tmp_path


class OffersWeather:
    """The real engine with the weather tool added to every request: the chat has no tools of
    its own yet, so this stands in for a tool registry (the model and its call stay real)."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.name = engine, engine.name

    @property
    def ready(self) -> bool:
        return bool(self.engine.ready)

    async def start(self) -> None:
        await self.engine.start()

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        fn = WEATHER_TOOL["function"]
        tool = Tool(fn["name"], fn["description"], fn["parameters"])
        return self.engine.stream(replace(request, tools=(tool,)))  # type: ignore[no-any-return]

    async def health(self) -> Any:
        return await self.engine.health()

    def capabilities(self) -> Any:
        return self.engine.capabilities()

    async def aclose(self) -> None:
        """The module's engine outlives each app."""


def test_the_label_says_how_long_it_thought() -> None:
    assert thinking_label(3.24, expanded=False, running=False) == "▸ thinking (3.2 s)"
    assert thinking_label(0.5, expanded=True, running=True).startswith("▾ thinking… 0.5")


async def test_reasoning_is_a_collapsed_block_that_a_click_expands(thinking_engine: Any) -> None:
    app = make_app(Unclosed(thinking_engine), max_tokens=96)
    async with app.run_test(size=(110, 32)) as pilot:
        stored = await answer(pilot, "What is the capital of Italy?")
        parts = app.store.parts(stored.id)
        assert parts.reasoning and parts.thinking_s is not None and parts.reasoning_tokens > 0
        assert parts.reasoning not in stored.content and "<think>" not in stored.content
        view = answer_views(app)[-1]
        block = view.query_one(ThinkingBlock)
        shown = str(block.render())
        assert shown.startswith("▸ thinking (") and parts.reasoning not in shown
        assert view.query_one(StreamedMarkdown).source == stored.content
        await pilot.click(ThinkingBlock)
        await until(pilot, lambda: block.expanded)
        assert parts.reasoning in str(block.render())
        block.focus()
        await pilot.press("enter")
        await until(pilot, lambda: not block.expanded)
        await pilot.click(ThinkingBlock)
        await until(pilot, lambda: block.expanded)
        # Reopened, the conversation shows the stored reasoning collapsed again.
        assert app.chat.conversation is not None
        await app.chat.open_conversation(app.chat.conversation.id)
        await pilot.pause()
        again = answer_views(app)[-1].query_one(ThinkingBlock)
        assert again.text == parts.reasoning and not again.expanded


async def test_a_tool_call_shows_as_a_card(thinking_engine: Any) -> None:
    app = make_app(OffersWeather(thinking_engine), max_tokens=96)
    async with app.run_test(size=(110, 32)) as pilot:
        stored = await answer(pilot, "What is the weather in Madrid?")
        parts = app.store.parts(stored.id)
        [call] = parts.tool_calls
        assert call["name"] == "get_weather" and '"city"' in call["arguments"]
        assert stored.route is not None and stored.route.finish_reason == "tool_calls"
        card = answer_views(app)[-1].query_one(ToolCallCard)
        assert str(card.render()).startswith("⚙ get_weather(")
        assert parts == AnswerParts(parts.reasoning, parts.thinking_s, parts.reasoning_tokens,
                                    (call,))


async def test_f10_turns_thinking_off_for_the_conversation(thinking_engine: Any) -> None:
    app = make_app(Unclosed(thinking_engine), max_tokens=64)
    async with app.run_test(size=(110, 32)) as pilot:
        await until(pilot, lambda: app.chat.conversation is not None)
        assert app.chat.conversation is not None
        conv = app.chat.conversation.id
        await pilot.press("f10", "f10")  # default → on → off
        assert app.store.thinking(conv) is False
        stored = await answer(pilot, "What color is the sky?")
        assert stored.content and not app.store.parts(stored.id).reasoning
        assert not answer_views(app)[-1].query(ThinkingBlock)
        await pilot.press("f10")
        assert app.store.thinking(conv) is None


class Unclosed(OffersWeather):
    """The module's engine without tools, kept open when an app closes."""

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        return self.engine.stream(request)  # type: ignore[no-any-return]
