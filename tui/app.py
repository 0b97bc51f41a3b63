"""The tandem chat app: paints at once, loads the model in the background, and shows every
answer with where it ran, why, and how fast.

The app takes any `router.protocol.Backend` (through a `Composition`): the composition root
builds the real one (`tui.compose`), tests inject theirs. It owns the backend's lifecycle, the
store and the config; `ChatScreen` owns the conversation and its answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable, Iterable
from dataclasses import replace
from functools import partial

from textual import work
from textual.app import App, SystemCommand
from textual.screen import Screen

from router.protocol import (
    Backend,
    BackendError,
    ChatRequest,
    Overloaded,
    Pin,
    StreamEvent,
    Unauthorized,
    Unavailable,
)
from tui.collector import freeze_long_lived
from tui.compose import ComposeError, Composition, build_composition, router_settings
from tui.config import Config, save_config
from tui.screens.chat import ChatScreen
from tui.screens.dialogs import TextPrompt
from tui.screens.settings import SettingsScreen
from tui.store import Conversation, Store
from tui.threads import in_daemon_thread
from tui.widgets.status import StatusBar

__all__ = ["TandemApp"]

CLOUD_HEALTH_EVERY_S = 15.0
CLOSE_TIMEOUT_S = 2.0


class TandemApp(App[None]):
    """The chat. Pass `composition` (already built, e.g. by a test) or let the app build one
    from `config` (with `model`/`draft_model` overrides) after its first frame."""

    CSS_PATH = "app.tcss"
    TITLE = "tandem"

    def __init__(
        self,
        *,
        store: Store,
        config: Config,
        composition: Composition | None = None,
        model: str | None = None,
        draft_model: str | None = None,
        build: Callable[..., Composition] = build_composition,
    ) -> None:
        super().__init__()
        self.store = store
        self.config = config
        self.composition = composition
        self._owns_composition = composition is None
        self._model = model
        self._draft_model = draft_model
        self._build = build
        self.backend_built = asyncio.Event()
        """Set once the backend exists (the local model may still be loading); the router
        can send to the cloud from then on."""
        self.backend_ready = asyncio.Event()
        """Set once the local model is loaded (or failed to load: see `boot_error`)."""
        self.boot_error: str | None = None
        self.local_state = "starting…"
        self.cloud_state = "off"
        self.first_paint_at: float | None = None
        """time.time() of the first frame (the benchmark reads it)."""
        self._loading_since = time.monotonic()

    @property
    def chat(self) -> ChatScreen:
        for screen in self.screen_stack:
            if isinstance(screen, ChatScreen):
                return screen
        raise LookupError("the chat screen is not open")

    # --- start-up ---

    def on_mount(self) -> None:
        self.push_screen(ChatScreen())
        self.refresh_status()
        self.set_interval(0.5, self._tick_loading, name="loading-progress")

    def on_ready(self) -> None:
        # Only after the first frame: building the backend imports MLX, which would hold
        # the interpreter while the window is still blank.
        self.first_paint_at = time.time()
        self.boot()

    @work(exclusive=True, group="boot")
    async def boot(self) -> None:
        """Build the backend (off the UI thread: importing MLX takes a moment) and load the
        model, showing progress in the status bar; queued messages go out when it is ready."""
        self.backend_ready.clear()
        self.backend_built.clear()
        self.boot_error = None
        self._loading_since = time.monotonic()
        self.local_state = "loading…"
        self.refresh_status()
        try:
            if self.composition is None:
                self.composition = await in_daemon_thread(
                    partial(
                        self._build, self.config, model=self._model, draft_model=self._draft_model
                    )
                )
                self._owns_composition = True
                for note in self.composition.notes:
                    self.notify(note, timeout=8)
            self.backend_built.set()
            await self.composition.start()  # returns at once when already started
            self.local_state = "ready"
            if self.composition.cloud is not None:
                self.cloud_state = "connecting…"
                self.set_interval(CLOUD_HEALTH_EVERY_S, self.check_cloud, name="cloud-health")
                self.check_cloud()
        except (ComposeError, BackendError) as exc:
            self.boot_error = str(exc)
            self.local_state = "not loaded"
            self.notify(str(exc), severity="error", timeout=15)
        except Exception as exc:  # a model that cannot load must not take the app down
            self.boot_error = f"The model could not be loaded: {type(exc).__name__}: {exc}"
            self.local_state = "not loaded"
            self.notify(self.boot_error, severity="error", timeout=15)
        finally:
            self.backend_built.set()
            self.backend_ready.set()
            self.refresh_status()
            freeze_long_lived()  # the app, the model and its tokenizer: alive until exit

    def _tick_loading(self) -> None:
        if not self.backend_ready.is_set():
            self.local_state = f"loading… {time.monotonic() - self._loading_since:.0f}s"
        self.refresh_status()

    @work(exclusive=True, group="cloud-health")
    async def check_cloud(self) -> None:
        """Ask the cloud how it is (never before first paint, never in local-only mode)."""
        comp = self.composition
        cloud = comp.cloud if comp else None
        if cloud is None:
            return
        if self.config.mode == "local-only":
            self.cloud_state = "not used (local-only)"
        else:
            self.cloud_state = await _cloud_state(cloud)
            breaker = comp.backend.breakers["cloud"] if comp else None
            if breaker is not None and not breaker.allows():
                self.cloud_state = "circuit open"
        self.refresh_status()

    # --- status ---

    def refresh_status(self) -> None:
        try:
            bar = self.chat.query_one(StatusBar)
        except Exception:  # before the chat screen is mounted
            return
        label = self.composition.model_label if self.composition else ""
        bar.set(local=self.local_state, model=label, cloud=self.cloud_state, mode=self.config.mode)

    def show_pin(self, conv: Conversation) -> None:
        try:
            bar = self.chat.query_one(StatusBar)
        except Exception:
            return
        bar.set(pin="⌂ local-only" if conv.local_only else "")

    def note_failure(self, exc: BaseException) -> None:
        """Reflect a failed answer in the cloud state when it came from the cloud."""
        if not isinstance(exc, BackendError) or exc.backend in ("", "local"):
            return
        if isinstance(exc, Unauthorized):
            self.cloud_state = "unauthorized"
        elif isinstance(exc, Overloaded):
            self.cloud_state = "overloaded"
        elif isinstance(exc, Unavailable):
            self.cloud_state = "offline"
        self.refresh_status()

    # --- answering ---

    def may_use_cloud(self, conv: Conversation) -> bool:
        """Whether an answer could go to the cloud while the local model still loads."""
        comp = self.composition
        return (
            comp is not None
            and comp.cloud is not None
            and not conv.local_only
            and self.config.mode != "local-only"
        )

    def cannot_pin(self, side: str, conv: Conversation | None) -> str | None:
        """Why an answer cannot be pinned to `side` now, or None when it can."""
        if side == "cloud":
            if conv is not None and conv.local_only:
                return "This conversation is pinned to this device (F7 to unpin)."
            if self.composition is None or self.composition.cloud is None:
                return "No cloud configured: set a cloud URL and API key in Settings (F3)."
        return None

    async def stream_answer(
        self, conv: Conversation, request: ChatRequest, side: str | None
    ) -> AsyncGenerator[StreamEvent, None]:
        """The answer's events from the router, with the conversation's local-only pin (a hard
        rule of the router) or the side the user asked for ("regenerate on the other side");
        the router still puts privacy and availability first, and its `Routed` says why."""
        if self.boot_error or self.composition is None:
            raise Unavailable(self.boot_error or "The model is not loaded.", backend="local")
        problem = self.cannot_pin(side, conv) if side else None
        if problem:
            raise Unavailable(problem, backend=side or "")
        pin: Pin | None = "cloud" if side == "cloud" else "local" if side == "local" else None
        request = replace(request, pin=None if conv.local_only else pin, local_only=conv.local_only)
        async with contextlib.aclosing(self.composition.backend.stream(request)) as events:
            async for event in events:
                yield event

    # --- app-wide actions ---

    @work
    async def action_settings(self) -> None:
        """F3: the settings screen."""
        config = await self.push_screen_wait(SettingsScreen(self.config))
        if config is not None:
            changed_backend = (config.cloud_url, config.mode) != (
                self.config.cloud_url,
                self.config.mode,
            )
            cloud_changed = (config.cloud_url, config.cloud_ca_file) != (
                self.config.cloud_url,
                self.config.cloud_ca_file,
            )
            self.config = config
            self.notify("Settings saved.")
            comp = self.composition
            if comp is not None:
                # Mode, threshold and privacy terms apply from the next answer on.
                comp.backend.configure(router_settings(config))
            if cloud_changed or (changed_backend and comp is not None and comp.cloud is None):
                self.notify("Cloud settings changed: restart tandem to connect.", timeout=8)
            self.refresh_status()
            self.check_cloud()

    @work
    async def action_switch_model(self) -> None:
        """F9: load another local model (the current one is freed first)."""
        current = self._model or self.config.model
        model = await self.push_screen_wait(
            TextPrompt("Switch model: a folder or hub id", current or "")
        )
        if not model or model.strip() == current:
            return
        await self.chat.cancel_answer()
        self.config.model = model.strip()
        save_config(self.config)
        self._model = model.strip()
        old, self.composition = self.composition, None
        if old is not None and self._owns_composition:
            await old.aclose()  # an injected backend belongs to whoever injected it
        self.boot()

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        try:
            chat = self.chat
        except LookupError:
            return
        commands: list[tuple[str, str, Callable[[], object]]] = [
            ("Cancel answer", "Esc: stop streaming, keep the partial text", chat.action_cancel),
            ("Regenerate", "Ctrl+R: answer the last message again", chat.action_regenerate),
            (
                "Regenerate on the other side",
                "Ctrl+O: device ⇄ cloud",
                chat.action_regenerate_other,
            ),
            ("Edit and resend last message", "Ctrl+L", chat.action_edit_last),
            ("Copy last answer", "Ctrl+T (OSC 52; pbcopy on macOS)", chat.action_copy_answer),
            ("Copy last code block", "Ctrl+G", chat.action_copy_code),
            ("New conversation", "Ctrl+N", chat.action_new_conversation),
            ("Rename conversation", "F2", chat.action_rename),
            ("Delete conversation", "F8", chat.action_delete),
            ("Search conversations", "Ctrl+F", chat.action_search),
            ("Export conversation (Markdown + JSON)", "Ctrl+S", chat.action_export),
            ("Toggle conversation list", "Ctrl+B", chat.action_toggle_sidebar),
            ("Show route record of last answer", "F4", chat.action_route_record),
            ("Set system prompt", "F5: for this conversation", chat.action_system_prompt),
            ("Set adapter", "F6: LoRA adapter for this conversation", chat.action_adapter),
            (
                "Toggle local-only pin",
                "F7: never send this conversation to the cloud",
                chat.action_toggle_local_only,
            ),
            (
                "Settings",
                "F3: cloud URL, API key, model, mode, privacy terms",
                partial(self.run_action, "settings"),
            ),
            (
                "Switch model",
                "F9: load another local model",
                partial(self.run_action, "switch_model"),
            ),
        ]
        for title, help_text, callback in commands:
            yield SystemCommand(title, help_text, callback)

    async def on_unmount(self) -> None:
        comp = self.composition
        # Quitting must not wait for a model still loading: the process is ending anyway.
        if self._owns_composition and comp is not None and comp.backend.ready:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(comp.aclose(), CLOSE_TIMEOUT_S)


async def _cloud_state(cloud: Backend) -> str:
    """connected / unauthorized / overloaded / offline, from the cloud's health and, when it
    is not healthy, the typed error of a second look."""
    try:
        health = await cloud.health()
    except Exception:
        return "offline"
    if health.ok:
        return "connected"
    if isinstance(health.error, Unauthorized):
        return "unauthorized"
    if isinstance(health.error, Overloaded):
        return "overloaded"
    return "offline"
