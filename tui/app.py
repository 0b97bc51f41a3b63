"""The tandem chat app: paints at once, loads the model in the background, and shows every
answer with where it ran, why, and how fast.

Calls only go down: the app holds a `ChatSession` (tui/session.py: the composition's life,
no Textual) and mirrors its state in reactives that the status bar follows; the chat screen
gets the store and the session when it is made and posts messages up (`AnswerFailed`). The
composition root builds the real backend (`tui.compose`); tests inject theirs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from functools import partial

from textual import on, work
from textual.app import App, SystemCommand
from textual.reactive import reactive
from textual.screen import Screen

from tui.collector import freeze_long_lived
from tui.compose import Composition, build_composition
from tui.config import Config, update_config
from tui.screens.chat import ChatScreen
from tui.screens.dialogs import TextPrompt
from tui.screens.settings import SettingsScreen
from tui.session import ChatSession, SessionState, Severity
from tui.store import Store

__all__ = ["TandemApp"]


class TandemApp(App[None]):
    """The chat. Pass `composition` (already built, e.g. by a test) or let the app build one
    from `config` (with `model`/`draft_model` overrides) after its first frame."""

    CSS_PATH = "app.tcss"
    TITLE = "tandem"

    local_state = reactive("starting…")
    """The device, as the status bar shows it (from the session)."""
    model_label = reactive("")
    cloud_state = reactive("off")
    routing_mode = reactive("auto")

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
        self.session = ChatSession(
            config,
            composition=composition,
            model=model,
            draft_model=draft_model,
            build=build,
            on_state=self._show_state,
            on_note=self._note,
        )
        self.first_paint_at: float | None = None
        """time.time() of the first frame (the benchmark reads it)."""
        self._show_state(self.session.state)

    # --- what tests and the palette read (the session's, for short) ---

    @property
    def config(self) -> Config:
        return self.session.config

    @property
    def composition(self) -> Composition | None:
        return self.session.composition

    @property
    def backend_ready(self) -> asyncio.Event:
        return self.session.ready

    @property
    def boot_error(self) -> str | None:
        return self.session.boot_error

    @property
    def chat(self) -> ChatScreen:
        for screen in self.screen_stack:
            if isinstance(screen, ChatScreen):
                return screen
        raise LookupError("the chat screen is not open")

    def _show_state(self, state: SessionState) -> None:
        self.local_state = state.local
        self.model_label = state.model
        self.cloud_state = state.cloud
        self.routing_mode = state.mode

    def _note(self, text: str, severity: Severity) -> None:
        self.notify(text, severity=severity, timeout=15 if severity == "error" else 8)

    # --- start-up ---

    def on_mount(self) -> None:
        self.push_screen(ChatScreen(self.store, self.session))

    def on_ready(self) -> None:
        # Only after the first frame: building the backend imports MLX, which would hold
        # the interpreter while the window is still blank.
        import time

        self.first_paint_at = time.time()
        self.boot()
        self.start_tools()

    @work(group="tools")
    async def start_tools(self) -> None:
        """Start the MCP servers beside the model's load (answers wait for both)."""
        await self.session.start_tools()

    @work(exclusive=True, group="boot")
    async def boot(self, model: str | None = None) -> None:
        """Build the backend and load the model, or switch to `model` (progress in the
        status bar); messages sent meanwhile wait, or go to the cloud."""
        try:
            if model is None:
                await self.session.boot()
            else:
                await self.session.switch_model(model)
        finally:
            freeze_long_lived()  # the app, the model and its tokenizer: alive until exit

    @work(exclusive=True, group="cloud-health")
    async def check_cloud(self) -> None:
        """Ask the cloud how it is now (the session also asks every 15 s)."""
        await self.session.check_cloud()

    @on(ChatScreen.AnswerFailed)
    def _answer_failed(self, event: ChatScreen.AnswerFailed) -> None:
        self.session.note_failure(event.error)

    # --- app-wide actions ---

    @work
    async def action_settings(self) -> None:
        """F3: the settings screen."""
        config = await self.push_screen_wait(SettingsScreen(self.config))
        if config is not None:
            self.notify("Settings saved.")
            restart = self.session.apply_settings(config)
            if restart:
                self.notify(restart, timeout=8)
            self.check_cloud()

    @work
    async def action_switch_model(self) -> None:
        """F9: load another local model (the current one is freed first)."""
        current = self.session.model
        model = await self.push_screen_wait(
            TextPrompt("Switch model: a folder or hub id", current or "")
        )
        if not model or model.strip() == current:
            return
        await self.chat.cancel_answer()
        update_config({"model": model.strip()})  # the model only: not this session's flags
        self.boot(model.strip())

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
        await self.session.aclose()
