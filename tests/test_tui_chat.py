"""The chat app, driven by Textual's pilot against the real local engine on the test model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Input, ListView, Static

from router.protocol import ChatRequest, Message, Sampling, collect
from tests.reference import mlx_greedy, word_in
from tests.tui_support import (
    Throttled,
    answer,
    answer_views,
    last_answer,
    make_app,
    send,
    until,
)
from tui.paths import paths
from tui.screens.dialogs import RouteRecord, SearchDialog
from tui.screens.rounds import WAITING
from tui.widgets.status import StatusBar
from tui.widgets.streamed import StreamedMarkdown

pytestmark = pytest.mark.mlx

RIVER = "Tell me about the river."
FRANCE = "What is the capital of France?"
DOG = "What sound does a dog make?"


def said(models: Any, question: str) -> str:
    """Plain mlx-lm's greedy answer on this machine (make_app's 48 tokens): what the chat
    must show and store (the test model is trained here, so the text is never fixed)."""
    return mlx_greedy(models.target, question, max_tokens=48)


def current(app: Any) -> str | None:
    return app.chat.conversation.id if app.chat.conversation else None


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    return tmp_path


async def test_a_typed_message_streams_an_answer_with_its_badge(
    tui_local_engine: Any, test_models: Any
) -> None:
    app = make_app(tui_local_engine)
    async with app.run_test(size=(110, 32)) as pilot:
        stored = await answer(pilot, FRANCE)
        assert stored.content == said(test_models, FRANCE)
        assert stored.status == "complete"
        assert stored.route is not None and stored.route.backend == "local"
        assert stored.route.reason  # the router's words, e.g. "no cloud configured → ..."
        assert stored.route.completion_tokens > 0
        view = answer_views(app)[-1]
        assert view.query_one(StreamedMarkdown).source == stored.content
        badge = str(view.query_one(".badge", Static).render())
        assert badge.startswith("device")
        assert stored.route.reason in badge
        assert "tok/s" in badge and "ttft" in badge
        assert f"→ {stored.route.completion_tokens} tokens" in badge
        status = str(app.chat.query_one(StatusBar).render())
        assert "ready" in status and "mode: auto" in status
        # F4 opens the full route record.
        await pilot.press("f4")
        await until(pilot, lambda: isinstance(app.screen, RouteRecord))
        record = json.loads(str(app.screen.query_one("#route-json", Static).render()))
        assert record["backend"] == "local" and record["model"]


async def test_esc_cancels_and_keeps_the_partial_answer_marked(
    tui_local_engine: Any,
) -> None:
    full, _ = await collect(
        tui_local_engine.stream(ChatRequest((Message("user", RIVER),), Sampling(max_tokens=400)))
    )
    slow = Throttled(tui_local_engine, delay_s=0.03)
    app = make_app(slow, max_tokens=400)
    async with app.run_test(size=(110, 32)) as pilot:
        await send(pilot, RIVER)
        await until(pilot, lambda: bool(answer_views(app) and answer_views(app)[-1].body_text))
        await pilot.press("escape")
        await until(pilot, lambda: not app.chat.streaming)
        stored = last_answer(app)
        assert stored.status == "cancelled"
        assert stored.content and full.startswith(stored.content)
        assert len(stored.content) < len(full)
        note = str(answer_views(app)[-1].query_one(".note", Static).render())
        assert "cancelled" in note


async def test_regenerate_replaces_the_last_answer(
    tui_local_engine: Any, test_models: Any
) -> None:
    app = make_app(tui_local_engine)
    async with app.run_test(size=(110, 32)) as pilot:
        first = await answer(pilot, "What sound does a dog make?")
        await pilot.press("ctrl+r")
        await until(pilot, lambda: app.chat.streaming or last_answer(app).id != first.id)
        await until(pilot, lambda: not app.chat.streaming)
        second = last_answer(app)
        assert second.id != first.id
        assert second.content == first.content == said(test_models, DOG)
        assert app.chat.conversation is not None
        roles = [m.role for m in app.store.messages(app.chat.conversation.id)]
        assert roles == ["user", "assistant"]
        assert len(answer_views(app)) == 1


async def test_edit_and_resend_replaces_the_last_exchange(
    tui_local_engine: Any, test_models: Any
) -> None:
    app = make_app(tui_local_engine)
    async with app.run_test(size=(110, 32)) as pilot:
        await answer(pilot, "What sound does a dog make?")
        await pilot.press("ctrl+l")
        composer: Any = app.chat.query_one("#composer")
        assert composer.text == "What sound does a dog make?"
        composer.text = ""
        stored = await answer(pilot, FRANCE)
        assert stored.content == said(test_models, FRANCE)
        assert app.chat.conversation is not None
        contents = [m.content for m in app.store.messages(app.chat.conversation.id)]
        assert contents == [FRANCE, said(test_models, FRANCE)]


async def test_search_finds_a_message_and_opens_its_conversation(
    tui_local_engine: Any, test_models: Any
) -> None:
    app = make_app(tui_local_engine)
    async with app.run_test(size=(110, 32)) as pilot:
        await answer(pilot, "What is the capital of France?")
        assert app.chat.conversation is not None
        wanted = app.chat.conversation.id
        await pilot.press("ctrl+n")
        await until(pilot, lambda: current(app) != wanted)
        await pilot.press("ctrl+f")
        await until(pilot, lambda: isinstance(app.screen, SearchDialog))
        word = word_in(said(test_models, FRANCE)).lower()  # a word of the answer
        await pilot.press(*word, "enter")
        results = app.screen.query_one(ListView)
        await until(pilot, lambda: len(results.children) > 0)
        assert word in str(results.children[0].query_one(Static).render()).lower()
        results.focus()
        results.index = 0
        await pilot.press("enter")
        await until(pilot, lambda: current(app) == wanted)
        assert app.chat.conversation is not None
        assert app.chat.conversation.title == "What is the capital of France?"


async def test_export_writes_valid_markdown_and_json(
    tui_local_engine: Any, test_models: Any
) -> None:
    app = make_app(tui_local_engine)
    async with app.run_test(size=(110, 32)) as pilot:
        await answer(pilot, "What is the capital of France?")
        await pilot.press("ctrl+s")
        exports = paths().data_dir / "exports"
        await until(pilot, lambda: len(list(exports.glob("*"))) == 2)
    data = json.loads(next(exports.glob("*.json")).read_text())
    assert [m["content"] for m in data["messages"]] == [FRANCE, said(test_models, FRANCE)]
    assert data["messages"][1]["route"]["backend"] == "local"
    md = next(exports.glob("*.md")).read_text()
    assert md.startswith("# What is the capital of France?\n")
    assert f"## Assistant\n\n{said(test_models, FRANCE)}\n" in md


async def test_a_message_sent_while_the_model_loads_waits_then_is_answered(
    test_models: Any,
) -> None:
    from local.engine import LocalEngine

    engine = LocalEngine(test_models.target)  # not started: the app loads it after first paint
    app = make_app(engine)
    try:
        async with app.run_test(size=(110, 32)) as pilot:
            loading = not app.backend_ready.is_set()
            await send(pilot, "What is the capital of France?")
            if loading and not app.backend_ready.is_set():
                note = answer_views(app)[-1].query_one(".note", Static)
                assert str(note.render()) == WAITING
            await until(pilot, lambda: not app.chat.streaming)
            assert last_answer(app).content == said(test_models, FRANCE)
            assert "ready" in str(app.chat.query_one(StatusBar).render())
    finally:
        await engine.aclose()


async def test_the_palette_offers_every_chat_action(tui_local_engine: Any) -> None:
    app = make_app(tui_local_engine)
    async with app.run_test(size=(110, 32)) as pilot:
        titles = {c.title for c in app.get_system_commands(app.screen)}
        for wanted in (
            "Cancel answer",
            "Regenerate",
            "Regenerate on the other side",
            "Edit and resend last message",
            "Copy last answer",
            "Copy last code block",
            "New conversation",
            "Rename conversation",
            "Delete conversation",
            "Search conversations",
            "Export conversation (Markdown + JSON)",
            "Set system prompt",
            "Set adapter",
            "Toggle local-only pin",
            "Settings",
            "Switch model",
        ):
            assert wanted in titles
        await pilot.press("ctrl+p")
        await pilot.press(*"regenerate on")
        await pilot.pause(0.3)
        assert app.screen.query_one(Input).value == "regenerate on"


async def test_regenerate_on_the_other_side_without_a_cloud_says_why(
    tui_local_engine: Any,
) -> None:
    app = make_app(tui_local_engine)
    async with app.run_test(size=(110, 32)) as pilot:
        first = await answer(pilot, "What sound does a dog make?")
        await pilot.press("ctrl+o")
        await pilot.pause(0.2)
        assert last_answer(app).id == first.id  # nothing was thrown away
        assert any("No cloud configured" in str(n.message) for n in app._notifications)


async def test_ctrl_j_adds_a_line_and_enter_sends_both(tui_local_engine: Any) -> None:
    app = make_app(tui_local_engine)
    async with app.run_test(size=(110, 32)) as pilot:
        app.chat.query_one("#composer").focus()
        await pilot.press(*"Hello", "ctrl+j", *"What sound does a dog make?")
        composer: Any = app.chat.query_one("#composer")
        assert composer.text == "Hello\nWhat sound does a dog make?"
        await pilot.press("enter")
        await until(pilot, lambda: app.chat.answer_worker is not None)
        await until(pilot, lambda: not app.chat.streaming)
        assert composer.text == ""
        assert app.chat.conversation is not None
        first = app.store.messages(app.chat.conversation.id)[0]
        assert first.content == "Hello\nWhat sound does a dog make?"


async def test_an_edit_left_pending_does_not_delete_another_conversations_messages(
    tui_local_engine: Any,
) -> None:
    app = make_app(tui_local_engine)
    async with app.run_test(size=(110, 32)) as pilot:
        await answer(pilot, "What sound does a dog make?")
        assert app.chat.conversation is not None
        first = app.chat.conversation.id
        await pilot.press("ctrl+n")
        await until(pilot, lambda: current(app) != first)
        await answer(pilot, "What is the capital of France?")
        second = current(app)
        assert second is not None
        before = [(m.id, m.content) for m in app.store.messages(second)]
        await app.chat.open_conversation(first)
        await pilot.press("ctrl+l")  # the dog question goes back into the input...
        await app.chat.open_conversation(second)  # ...and the user walks away from it
        composer: Any = app.chat.query_one("#composer")
        assert composer.text == ""  # the edit stayed with its conversation
        await answer(pilot, "What sound does a dog make?")
        after = [(m.id, m.content) for m in app.store.messages(second)]
        assert after[:2] == before and len(after) == 4
        kept = [m.content for m in app.store.messages(first)]
        assert len(kept) == 2 and kept[0] == "What sound does a dog make?"
