"""The composition root: builds the backend the chat talks to from the user's config.

The local engine always; the cloud client when a cloud URL and an API key exist; both wrapped
in the router's hybrid backend. Building is cheap and does no network
I/O; loading the model happens in `Composition.start()`, which the app runs after first paint.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from router.protocol import Service, TandemError
from tui.config import Config

if TYPE_CHECKING:
    from router.hybrid import HybridBackend
from tui.paths import paths

__all__ = [
    "ComposeError",
    "Composition",
    "DefaultNotPulled",
    "build_composition",
    "choose_model",
    "router_settings",
]


class ComposeError(TandemError):
    """The config does not describe a backend tandem can build (e.g. no model)."""


class DefaultNotPulled(ComposeError):
    """No model is configured and the default for this machine's memory is not on it yet:
    `hub_id` is the one to pull (the chat does, with progress)."""

    def __init__(self, hub_id: str) -> None:
        super().__init__(
            f"No model configured and the default for this machine, {hub_id}, is not pulled: "
            f"run `tandem models pull {hub_id}`, or pass --model PATH (or set TANDEM_MODEL)."
        )
        self.hub_id = hub_id


def choose_model(config: Config, model: str | None = None) -> tuple[str, str]:
    """(what to load, a note or "") for `model`, else the config's, else the default for this
    machine's memory when it was pulled. Names found in tandem's models folder (or the hub's
    cache) become their folder, so the chat loads what `tandem models default` shows.
    Raises DefaultNotPulled when nothing is configured and no default is on this machine."""
    from local.loading import find_model
    from local.models import pulled_default

    models_dir = paths().models_dir
    spec = model or config.model
    if not spec:
        found = pulled_default(models_dir)
        if found is None:
            from local.models import default_model

            raise DefaultNotPulled(default_model())
        hub_id, pulled = found
        return str(pulled), f"No model configured: using {hub_id} (`tandem models default`)."
    folder = find_model(spec, models_dir)
    return (str(folder) if folder is not None else spec), ""


@dataclass(slots=True)
class Composition:
    """What the chat runs on: `backend` is the one it streams from."""

    backend: HybridBackend
    """The router over `local` and `cloud`; it owns both (starts and closes them)."""
    local: Service
    """The device's engine (a LocalEngine, or what a test injects)."""
    cloud: Service | None = None
    notes: list[str] = field(default_factory=list)
    """Lines for the transcript, e.g. why the cloud is off."""
    model_label: str = ""

    async def start(self) -> None:
        """Load the local model (returns when it is ready)."""
        await self.backend.start()

    async def aclose(self) -> None:
        """Close what was built (the hybrid backend closes both sides itself)."""
        with contextlib.suppress(Exception):  # closing must never lose a session
            await self.backend.aclose()


def _adapter_resolver(model: str) -> Callable[[str], Path]:
    """Adapter names → folders, from the registry that `tandem finetune` writes (checked
    against the base model when the model is a local folder)."""
    from local.finetune.registry import AdapterRegistry

    registry = AdapterRegistry(paths().adapters_dir)
    base = Path(model)
    return registry.resolver(base) if base.exists() else registry.resolve


def router_settings(config: Config) -> Any:
    """The router's settings from the user's config (mode, threshold, privacy terms)."""
    from router.policy import RouterSettings

    return RouterSettings(
        mode=config.mode,
        complexity_threshold=config.complexity_threshold,
        privacy_terms=tuple(config.privacy_terms),
        privacy_patterns=tuple(config.privacy_patterns),
        privacy_regions=tuple(config.privacy_region),
        privacy_action=config.privacy_action,
    )


def build_composition(
    config: Config,
    *,
    model: str | None = None,
    draft_model: str | None = None,
    api_key: str | None = None,
) -> Composition:
    """Build (not start) the local engine, the cloud client and the hybrid backend.

    `model`/`draft_model` override the config; `api_key` None reads the keyring/env."""
    model, note = choose_model(config, model)
    from local.engine import LocalEngine
    from local.loading import find_model

    draft = draft_model or config.draft_model or None
    if draft:
        draft = str(find_model(draft, paths().models_dir) or draft)
    if config.mode == "local-only":
        # No byte leaves the machine, not even a model download: refuse before the engine
        # would fetch one from the hub.
        from local.loading import resolve_folder
        from router.protocol import ModelError

        try:
            for spec in (model, draft):
                if spec:
                    resolve_folder(spec, paths().models_dir, offline=True)
        except ModelError as exc:
            raise ComposeError(str(exc)) from exc
    local = LocalEngine(
        model,
        draft_model=draft,
        context_window=config.context_window or None,
        adapter_resolver=_adapter_resolver(model),
    )
    notes: list[str] = [note] if note else []
    cloud: Service | None = None
    cloud_missing = "no cloud configured"
    if config.cloud_url:
        from tui.secrets import ENV_VAR, load_api_key

        api_key = api_key or load_api_key()
        if not api_key:
            cloud_missing = "no cloud API key"
            notes.append(f"Cloud off: no API key (Settings, F3, or set {ENV_VAR}).")
        else:
            from cloud.client import CloudClient
            from cloud.trust import TrustError

            try:
                cloud = CloudClient(
                    config.cloud_url, api_key, ca_file=config.cloud_ca_file or None,
                    allow_http=config.cloud_allow_http,
                )  # fmt: skip
            except TrustError as exc:
                cloud_missing = "the cloud's CA file cannot be used"
                notes.append(f"Cloud off: {exc}; fix it in Settings (F3).")
    from router.hybrid import HybridBackend

    try:
        backend = HybridBackend(local, cloud, router_settings(config), cloud_missing=cloud_missing)
    except ValueError as exc:  # a privacy pattern that is not a valid regular expression
        raise ComposeError(f"Privacy settings: {exc}") from exc
    return Composition(
        backend=backend,
        local=local,
        cloud=cloud,
        notes=notes,
        model_label=_label(model),
    )


def _label(model: str) -> str:
    """The status bar's name for a model: a pulled ORG--NAME folder shows as NAME."""
    name = Path(model).name or model
    return name.split("--", 1)[-1]
