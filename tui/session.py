"""The chat session: the composition's life (build, model load, model switch, cloud health),
with no Textual in it.

The app creates one and shows its `SessionState`; the chat screen streams answers through it.
Everything here runs on the event loop; the slow parts (importing MLX, building, pulling a
model) run on daemon threads, which report back through the loop.

    boot()          build the composition (pull the default model first when none is
                    configured and none is on this machine), then load the model
    switch_model()  close the composition it built and boot on another model
    start_tools()   start the MCP servers the config declares (beside the model's load)
    stream()        one answer's events, from the router
    aclose()        stop polling the cloud, stop the MCP servers, close what it built
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, replace
from functools import partial
from typing import Literal

from router.protocol import (
    BackendError,
    ChatRequest,
    Overloaded,
    Pin,
    Service,
    StreamEvent,
    TandemError,
    Unauthorized,
    Unavailable,
)
from tui.compose import (
    ComposeError,
    Composition,
    DefaultNotPulled,
    build_composition,
    router_settings,
)
from tui.config import Config
from tui.mcp.hub import McpHub
from tui.mcp.permissions import Permissions
from tui.paths import paths
from tui.store import Conversation
from tui.threads import in_daemon_thread

__all__ = ["ChatSession", "SessionState", "Severity"]

CLOUD_HEALTH_EVERY_S = 15.0
LOADING_TICK_S = 0.5
CLOSE_TIMEOUT_S = 2.0

Severity = Literal["information", "warning", "error"]


@dataclass(frozen=True, slots=True)
class SessionState:
    """What the status bar shows about the session."""

    local: str = "starting…"
    """The device: starting…, loading… 3s, pulling NAME… 40%, ready, not loaded."""
    model: str = ""
    """The local model's short name."""
    cloud: str = "off"
    """off, connecting…, connected, unauthorized, overloaded, offline, circuit open, ..."""
    mode: str = "auto"


class ChatSession:
    """Owns the composition the chat runs on. Pass `composition` (already built: a test's;
    the session then never closes it) or let `boot()` build one from `config`."""

    def __init__(
        self,
        config: Config,
        *,
        composition: Composition | None = None,
        model: str | None = None,
        draft_model: str | None = None,
        build: Callable[..., Composition] = build_composition,
        on_state: Callable[[SessionState], None] = lambda state: None,
        on_note: Callable[[str, Severity], None] = lambda text, severity: None,
        health_every_s: float = CLOUD_HEALTH_EVERY_S,
    ) -> None:
        self.config = config
        self.composition = composition
        self._owns_composition = composition is None
        self._model = model
        self._draft_model = draft_model
        self._build = build
        self._on_state = on_state
        self._on_note = on_note
        self._health_every_s = health_every_s
        self.built = asyncio.Event()
        """Set once the composition exists (the local model may still be loading): the
        router can send to the cloud from then on."""
        self.ready = asyncio.Event()
        """Set once the local model is loaded, or failed to load (see `boot_error`)."""
        self.boot_error: str | None = None
        self.state = SessionState(mode=config.mode)
        self._loading_since = time.monotonic()
        self._pulling = ""
        self._poller: asyncio.Task[None] | None = None
        self.tools = McpHub(config.mcp_servers, log_file=paths().logs_dir / "mcp.log")
        """The user's MCP servers; their tools run on this device, each call asked for."""
        self.permissions = Permissions()
        self.tools_started = asyncio.Event()
        """Set once every enabled MCP server is ready or failed (at once when none is)."""

    # --- state ---

    def _set(self, **changes: str) -> None:
        self.state = replace(self.state, **changes)
        self._on_state(self.state)

    @property
    def model(self) -> str:
        """The model asked for (`--model`, F9, or the config), "" for the default."""
        return self._model or self.config.model

    @property
    def cloud(self) -> Service | None:
        return self.composition.cloud if self.composition is not None else None

    @property
    def polling(self) -> bool:
        """Whether the cloud's health is being polled (by one task, however many boots)."""
        return self._poller is not None and not self._poller.done()

    # --- start-up ---

    async def boot(self) -> None:
        """Build the composition (pulling the default model when needed) and load the model,
        publishing progress; never raises: a failure becomes `boot_error` and one note."""
        self.ready.clear()
        self.built.clear()
        self.boot_error = None
        self._loading_since = time.monotonic()
        self._set(local="loading…")
        ticker = asyncio.create_task(self._tick_loading())
        try:
            if self.composition is None:
                self.composition = await self._compose()
                self._owns_composition = True
                for note in self.composition.notes:
                    self._on_note(note, "information")
            self._set(model=self.composition.model_label)
            self.built.set()
            if self.boot_error is None:
                await self.composition.start()  # returns at once when already started
            elif self.composition.cloud is not None:
                await self.composition.cloud.start()  # no model here: the cloud answers
        except TandemError as exc:
            self._failed(str(exc))
        except Exception as exc:  # a model that cannot load must not take the app down
            self._failed(f"The model could not be loaded: {type(exc).__name__}: {exc}")
        finally:
            ticker.cancel()
            self._set(local="not loaded" if self.boot_error else "ready")
            self.built.set()
            self.ready.set()
        if self.cloud is not None:
            self._set(cloud="connecting…")
            self._poll_cloud()

    def _failed(self, message: str) -> None:
        self.boot_error = message
        self._on_note(message, "error")

    async def _compose(self) -> Composition:
        build = partial(self._build, self.config, model=self._model, draft_model=self._draft_model)
        try:
            return await in_daemon_thread(build)
        except DefaultNotPulled as missing:
            if self.config.mode == "local-only":  # no byte leaves the machine: no download
                raise ComposeError(
                    f"{missing} Local-only mode downloads nothing, models included."
                ) from missing
            hub_id = missing.hub_id
        try:
            await self._pull(hub_id)
        except ComposeError as exc:
            # The device has no model; the cloud (if any) can still answer: build with the
            # hub id, whose load is not tried (the hybrid fails over when asked).
            self._failed(str(exc))
            return await in_daemon_thread(partial(build, model=hub_id))
        return await in_daemon_thread(build)

    async def _pull(self, hub_id: str) -> None:
        """Pull the default model into tandem's models folder, progress in the state."""
        from local.models import HubUnreachable, pull

        loop = asyncio.get_running_loop()
        name = hub_id.rsplit("/", 1)[-1]
        self._on_note(f"No model configured: pulling {hub_id}, the default for this machine.",
                      "information")

        def progress(done: int, total: int) -> None:
            share = f"{done / total:.0%}" if total else f"{done / 2**20:.0f} MB"
            with contextlib.suppress(RuntimeError):  # the loop closed: tandem is quitting
                loop.call_soon_threadsafe(setattr, self, "_pulling", f"pulling {name}… {share}")

        self._pulling = f"pulling {name}…"
        try:
            await in_daemon_thread(
                partial(pull, hub_id, paths().models_dir, progress=progress)
            )
        except HubUnreachable as exc:
            raise ComposeError(
                f"No model on this device yet, and the Hugging Face hub cannot be reached to "
                f"pull the default ({hub_id}): connect and restart tandem, run `tandem models "
                f"pull {hub_id}` when online, or pass --model PATH."
            ) from exc
        except BackendError as exc:
            raise ComposeError(f"Pulling {hub_id} failed: {exc}") from exc
        finally:
            self._pulling = ""

    async def _tick_loading(self) -> None:
        while True:
            seconds = time.monotonic() - self._loading_since
            self._set(local=self._pulling or f"loading… {seconds:.0f}s")
            await asyncio.sleep(LOADING_TICK_S)

    # --- tools ---

    async def start_tools(self) -> None:
        """Start the enabled MCP servers; a server that fails says so once (the chat goes on
        without its tools). Never raises."""
        try:
            names = None
            if self.config.mode == "local-only":  # no byte leaves: no server elsewhere
                names = [n for n in self.tools.names
                         if (spec := self.tools.spec(n)) and spec.enabled and not spec.remote]
            await self.tools.start(names)
            for state in self.tools.states():
                if state.status == "failed":
                    self._on_note(f"MCP server {state.name!r} did not start: {state.detail}. "
                                  "`tandem mcp list` shows why; its tools are off.", "warning")
        finally:
            self.tools_started.set()

    def tool_servers(self, choices: dict[str, bool], conv: Conversation | None = None) -> list[str]:
        """The servers a conversation uses: its own choices (F11), else config.toml's. A
        local-only conversation (or mode) uses none on another machine: what a tool is sent
        would leave this one."""
        local_only = self.config.mode == "local-only" or (conv is not None and conv.local_only)
        chosen = []
        for name in self.tools.names:
            spec = self.tools.spec(name)
            if spec is None or (local_only and spec.remote):
                continue
            if choices.get(name, spec.enabled):
                chosen.append(name)
        return chosen

    # --- the cloud ---

    def _poll_cloud(self) -> None:
        """Ask the cloud how it is now and every `health_every_s`: one task for the whole
        session, however many times it boots."""
        if not self.polling:
            self._poller = asyncio.create_task(self._poll_forever(), name="cloud-health")

    async def _poll_forever(self) -> None:
        while True:
            await self.check_cloud()
            await asyncio.sleep(self._health_every_s)

    async def check_cloud(self) -> None:
        """Ask the cloud how it is (never in local-only mode)."""
        comp = self.composition
        cloud = self.cloud
        if comp is None or cloud is None:
            return
        if self.config.mode == "local-only":
            self._set(cloud="not used (local-only)")
            return
        state = await _cloud_state(cloud)
        if not comp.backend.breakers["cloud"].allows():
            state = "circuit open"
        self._set(cloud=state)

    def note_failure(self, exc: BaseException) -> None:
        """Reflect a failed answer in the cloud state when it came from the cloud."""
        if not isinstance(exc, BackendError) or exc.backend in ("", "local"):
            return
        if isinstance(exc, Unauthorized):
            self._set(cloud="unauthorized")
        elif isinstance(exc, Overloaded):
            self._set(cloud="overloaded")
        elif isinstance(exc, Unavailable):
            self._set(cloud="offline")

    # --- answering ---

    def may_use_cloud(self, conv: Conversation) -> bool:
        """Whether an answer could go to the cloud while the local model still loads."""
        return self.cloud is not None and not conv.local_only and self.config.mode != "local-only"

    def cannot_pin(self, side: str, conv: Conversation | None) -> str | None:
        """Why an answer cannot be pinned to `side` now, or None when it can."""
        if side == "cloud":
            if conv is not None and conv.local_only:
                return "This conversation is pinned to this device (F7 to unpin)."
            if self.cloud is None:
                return "No cloud configured: set a cloud URL and API key in Settings (F3)."
        return None

    async def stream(
        self, conv: Conversation, request: ChatRequest, side: str | None
    ) -> AsyncGenerator[StreamEvent, None]:
        """The answer's events from the router, with the conversation's local-only pin (a hard
        rule of the router) or the side the user asked for ("regenerate on the other side");
        the router still puts privacy and availability first, and its `Routed` says why.

        A device that failed to load does not stop the cloud: with one, the router fails over;
        without one, the boot error is the answer's."""
        comp = self.composition
        if comp is None or (self.boot_error and comp.cloud is None):
            raise Unavailable(self.boot_error or "The model is not loaded.", backend="local")
        problem = self.cannot_pin(side, conv) if side else None
        if problem:
            raise Unavailable(problem, backend=side or "")
        pin: Pin | None = "cloud" if side == "cloud" else "local" if side == "local" else None
        request = replace(request, pin=None if conv.local_only else pin, local_only=conv.local_only)
        async with contextlib.aclosing(comp.backend.stream(request)) as events:
            async for event in events:
                yield event

    # --- changes ---

    def apply_settings(self, config: Config) -> str | None:
        """Use `config` from the next answer on; returns a note when part of it needs a
        restart (the cloud is built once)."""
        old, self.config = self.config, config
        comp = self.composition
        if comp is not None:
            comp.backend.configure(router_settings(config))  # mode, threshold, privacy terms
        self._set(mode=config.mode)
        cloud_changed = (config.cloud_url, config.cloud_ca_file) != (
            old.cloud_url,
            old.cloud_ca_file,
        )
        mode_changed = config.mode != old.mode
        if cloud_changed or (mode_changed and comp is not None and comp.cloud is None):
            return "Cloud settings changed: restart tandem to connect."
        return None

    async def switch_model(self, model: str) -> None:
        """Free the current model (if the session built it) and boot on `model`."""
        self.config = replace(self.config, model=model)
        self._model = model
        self.ready.clear()  # answers sent from now on wait for the new model
        self.built.clear()
        old, self.composition = self.composition, None
        if old is not None and self._owns_composition:
            await old.aclose()  # an injected composition belongs to whoever injected it
        await self.boot()

    async def aclose(self) -> None:
        """Stop polling and the MCP servers, and close the composition the session built.
        Quitting does not wait for a model still loading, nor longer than CLOSE_TIMEOUT_S."""
        await self.tools.aclose()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._poller
        comp = self.composition
        if self._owns_composition and comp is not None and self.ready.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(comp.aclose(), CLOSE_TIMEOUT_S)


async def _cloud_state(cloud: Service) -> str:
    """connected / unauthorized / overloaded / offline, from the cloud's health."""
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
