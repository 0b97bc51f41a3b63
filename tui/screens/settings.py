"""Settings (F3): cloud URL and CA file, API key (OS keyring only), default model, mode,
privacy terms, the privacy region(s) and what a private conversation does when it would go to
the cloud (keep it on this device, or redact it)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Select, Static

from tui.config import MODES, PRIVACY_ACTIONS, Config, ConfigError, update_config
from tui.secrets import NoKeyring, keyring_status, save_api_key

__all__ = ["SettingsScreen"]


class SettingsScreen(ModalScreen[Config | None]):
    """Edits the config file (never a secret) and the key in the keyring; dismisses with the
    saved config, or None when nothing was saved."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "dismiss(None)", "Close")]

    def __init__(self, config: Config) -> None:
        super().__init__(classes="dialog")
        self._config = config

    def compose(self) -> ComposeResult:
        c = self._config
        with VerticalScroll(classes="box wide"):
            yield Label("Settings", classes="title")
            yield Label("Cloud URL (the gateway; empty: no cloud)")
            yield Input(c.cloud_url, placeholder="https://llm.example.org", id="cloud-url")
            yield Label("Cloud CA certificate (PEM file; only for a gateway with its own CA)")
            yield Input(c.cloud_ca_file, placeholder="/path/to/ca.pem", id="cloud-ca-file")
            yield Label("Cloud API key (stored in the OS keyring, never on disk by tandem)")
            yield Input("", password=True, placeholder="leave empty to keep", id="api-key")
            yield Static(keyring_status(), id="keyring-status", markup=False)
            yield Label("Default model (a folder or hub id)")
            yield Input(c.model, id="model")
            yield Label("Mode")
            yield Select([(m, m) for m in MODES], value=c.mode, allow_blank=False, id="mode")
            yield Label("Privacy terms: never sent to the cloud (comma-separated)")
            yield Input(", ".join(c.privacy_terms), id="privacy-terms")
            yield Label("Privacy region(s): phone numbers without a country code read as there")
            yield Input(
                ", ".join(c.privacy_region), placeholder="e.g. GB, DE (empty: from the locale)",
                id="privacy-region",
            )  # fmt: skip
            yield Label("Private data, when the cloud would answer: keep-local or redact")
            yield Select(
                [(a, a) for a in PRIVACY_ACTIONS], value=c.privacy_action, allow_blank=False,
                id="privacy-action",
            )  # fmt: skip
            yield Static("", id="settings-error", markup=False)
            with Horizontal(classes="buttons"):
                yield Button("Save", id="save", variant="primary")
                yield Button("Cancel (Esc)", id="cancel")

    @on(Button.Pressed, "#cancel")
    def _cancel(self) -> None:
        self.dismiss(None)

    @on(Button.Pressed, "#save")
    def action_save(self) -> None:
        error = self.query_one("#settings-error", Static)
        shown: dict[str, Any] = {
            "cloud_url": self.query_one("#cloud-url", Input).value.strip(),
            "cloud_ca_file": self.query_one("#cloud-ca-file", Input).value.strip(),
            "model": self.query_one("#model", Input).value.strip(),
            "mode": str(self.query_one("#mode", Select).value),
            "privacy_terms": [
                t.strip()
                for t in self.query_one("#privacy-terms", Input).value.split(",")
                if t.strip()
            ],
            "privacy_region": [
                r.strip().upper()
                for r in self.query_one("#privacy-region", Input).value.split(",")
                if r.strip()
            ],
            "privacy_action": str(self.query_one("#privacy-action", Select).value),
        }
        # Only what the user changed here is saved: the dialog opens on this session's values,
        # which may come from `--mode`, `--max-tokens` or TANDEM_* and are not theirs to keep.
        changes = {k: v for k, v in shown.items() if v != getattr(self._config, k)}
        try:
            config = replace(self._config, **changes)
            update_config(changes)
        except ConfigError as exc:
            error.update(str(exc))
            return
        key_input = self.query_one("#api-key", Input)
        key = key_input.value.strip()
        key_input.value = ""  # do not keep the secret in a widget longer than needed
        if key:
            try:
                save_api_key(key)
            except NoKeyring as exc:
                error.update(f"Settings saved; the key was NOT: {exc}")
                self.query_one("#keyring-status", Static).update(keyring_status())
                self._config = config
                return
        self.dismiss(config)
