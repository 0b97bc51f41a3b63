"""Helpers for the chat app's tests: build the app on an injected backend with its state in a
temporary TANDEM_HOME, and wait for answers through Textual's pilot."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from textual.pilot import Pilot

from router.hybrid import HybridBackend
from router.protocol import Capabilities, ChatRequest, Health, StreamEvent, TextDelta
from tui.app import TandemApp
from tui.compose import Composition
from tui.config import Config
from tui.paths import paths
from tui.store import Store, StoredMessage
from tui.widgets.transcript import MessageView


class Throttled:
    """A real backend's stream passed through with every delta delayed by `delay_s`.

    The tiny test model answers in a fifth of a second: too fast for a test (or a person) to
    press Esc or kill the app mid-answer. This stands in for a slower device; the model,
    its text and its cancellation stay real (closing this stream closes the engine's)."""

    def __init__(self, backend: Any, delay_s: float = 0.03) -> None:
        self.backend = backend
        self.name = backend.name
        self.delay_s = delay_s

    @property
    def ready(self) -> bool:
        return bool(getattr(self.backend, "ready", True))

    async def start(self) -> None:
        await self.backend.start()

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        return self.slow(self.backend.stream(request), self.delay_s)

    @staticmethod
    async def slow(
        inner: AsyncGenerator[StreamEvent, None], delay_s: float
    ) -> AsyncGenerator[StreamEvent, None]:
        """`inner`'s events, each delta `delay_s` later; closing this closes `inner`."""
        try:
            async for event in inner:
                if isinstance(event, TextDelta):
                    await asyncio.sleep(delay_s)
                yield event
        finally:
            await inner.aclose()

    async def health(self) -> Health:
        return await self.backend.health()  # type: ignore[no-any-return]

    def capabilities(self) -> Capabilities:
        return self.backend.capabilities()  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        await self.backend.aclose()


def make_app(
    backend: Any,
    *,
    max_tokens: int = 48,
    cloud: Any = None,
    config: Config | None = None,
) -> TandemApp:
    """The chat app on `backend` as the device side (behind the router's HybridBackend), its
    store in $TANDEM_HOME (the test sets it). `config` replaces the default
    `Config(max_tokens=max_tokens)`."""
    store = Store.open(paths().database)
    routed = HybridBackend(backend, cloud)
    composition = Composition(backend=routed, local=backend, cloud=cloud, model_label="target")
    config = config or Config(max_tokens=max_tokens)
    return TandemApp(store=store, config=config, composition=composition)


async def until(pilot: Pilot[Any], condition: Any, timeout: float = 60.0) -> None:
    """Let the app run until `condition()` holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {condition}")
        await pilot.pause(0.02)


async def send(pilot: Pilot[Any], text: str) -> None:
    """Type a message into the input and press Enter."""
    app = pilot.app
    assert isinstance(app, TandemApp)
    app.chat.query_one("#composer").focus()
    await pilot.press(*text)
    await pilot.press("enter")
    await until(pilot, lambda: app.chat.answer_worker is not None)


async def answer(pilot: Pilot[Any], text: str) -> StoredMessage:
    """Send a message and wait for its answer to finish; returns the stored answer."""
    app = pilot.app
    assert isinstance(app, TandemApp)
    await send(pilot, text)
    await until(pilot, lambda: not app.chat.streaming)
    await pilot.pause()
    return last_answer(app)


def last_answer(app: TandemApp) -> StoredMessage:
    assert app.chat.conversation is not None
    messages = app.store.messages(app.chat.conversation.id)
    assert messages and messages[-1].role == "assistant", messages
    return messages[-1]


def answer_views(app: TandemApp) -> list[MessageView]:
    return [v for v in app.chat.query(MessageView) if v.message.role == "assistant"]


def files_containing(root: Path, needle: bytes) -> list[Path]:
    """Every file under `root` whose bytes contain `needle`."""
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


async def settle() -> None:
    await asyncio.sleep(0)
