"""Each error class of the contract gets its own one-line message in the transcript, and the
history is kept."""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path

import pytest
from textual.widgets import Static

from router.protocol import (
    BackendError,
    Capabilities,
    ChatRequest,
    ContextTooLong,
    Health,
    ModelError,
    Overloaded,
    StreamEvent,
    TextDelta,
    Unauthorized,
    Unavailable,
)
from tests.tui_support import answer, answer_views, make_app
from tui.answering import describe_error


class FailingBackend:
    """A fault injector: yields a few words, then raises the given error. The real engines
    cannot be made to show every error class on demand (an unauthorized key on the device,
    say), which is why this fake exists."""

    name = "cloud"
    ready = True

    def __init__(self, error: BackendError) -> None:
        self.error = error

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        yield TextDelta("Partial ")
        raise self.error

    async def health(self) -> Health:
        return Health(False, str(self.error))

    def capabilities(self) -> Capabilities:
        return Capabilities("fake", 4096)

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


ERRORS: list[tuple[BackendError, str]] = [
    (Unavailable("cloud connection lost", backend="cloud"), "Not reachable (cloud)"),
    (Unauthorized("key refused", backend="cloud"), "set a new key in Settings"),
    (Overloaded("queue full", retry_after=3, backend="cloud"), "Try again in 3 s"),
    (ContextTooLong("5000 > 4096 tokens", backend="cloud"), "Start a new conversation"),
    (ModelError("bad adapter weights", backend="cloud"), "The model failed (cloud)"),
]


@pytest.mark.parametrize(("error", "expected"), ERRORS, ids=lambda v: type(v).__name__)
async def test_each_error_class_is_one_clear_line_and_the_history_stays(
    error: BackendError, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    app = make_app(FailingBackend(error))
    async with app.run_test(size=(110, 32)) as pilot:
        stored = await answer(pilot, "Hello?")
        assert stored.status == "error"
        assert stored.content == "Partial "  # the text that arrived is kept
        assert expected in stored.error
        assert "\n" not in stored.error and "Traceback" not in stored.error
        note = str(answer_views(app)[-1].query_one(".note", Static).render())
        assert expected in note
        assert app.chat.conversation is not None
        assert [m.content for m in app.store.messages(app.chat.conversation.id)] == [
            "Hello?",
            "Partial ",
        ]


def test_every_error_class_has_its_own_message() -> None:
    lines = {describe_error(error) for error, _ in ERRORS}
    assert len(lines) == len(ERRORS)
    assert "Unexpected error (RuntimeError: boom)" in describe_error(RuntimeError("boom"))
