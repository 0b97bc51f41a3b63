"""Settings: the API key goes to the OS keyring and nowhere on disk; without a keyring the
app says so and names the environment variable."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keyring
import pytest
from keyring.backend import KeyringBackend
from keyring.backends import fail
from textual.widgets import Input, Static

from tests.tui_support import files_containing, make_app, until
from tui.config import load_config, with_overrides
from tui.paths import paths
from tui.screens.settings import SettingsScreen
from tui.secrets import ENV_VAR, load_api_key

KEY = "tk-live-6b1f0c9e4d2a8f7e5c3b1a09"


class MemoryKeyring(KeyringBackend):
    """A real keyring backend that keeps secrets in this process's memory: the stand-in for
    the OS keyring, which headless Linux does not have."""

    priority = 1  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.secrets: dict[tuple[str, str], str] = {}

    def get_password(self, service: str, username: str) -> str | None:
        return self.secrets.get((service, username))

    def set_password(self, service: str, username: str, password: str) -> None:
        self.secrets[(service, username)] = password

    def delete_password(self, service: str, username: str) -> None:
        self.secrets.pop((service, username), None)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    monkeypatch.delenv(ENV_VAR, raising=False)
    before = keyring.get_keyring()
    try:
        yield tmp_path
    finally:
        keyring.set_keyring(before)


async def _fill_settings(pilot: Any) -> SettingsScreen:
    await pilot.press("f3")
    await until(pilot, lambda: isinstance(pilot.app.screen, SettingsScreen))
    screen = pilot.app.screen
    screen.query_one("#cloud-url", Input).value = "https://llm.example.org"
    screen.query_one("#api-key", Input).value = KEY
    screen.query_one("#privacy-terms", Input).value = "Project Falcon, ACME"
    screen.action_save()
    await pilot.pause()
    return screen


async def test_the_key_goes_to_the_keyring_and_nowhere_on_disk(
    home: Path, tui_local_engine: Any
) -> None:
    ring = MemoryKeyring()
    keyring.set_keyring(ring)
    app = make_app(tui_local_engine)
    async with app.run_test(size=(110, 40)) as pilot:
        await _fill_settings(pilot)
        await until(pilot, lambda: not isinstance(app.screen, SettingsScreen))
        assert app.config.cloud_url == "https://llm.example.org"
    app.store.close()
    assert ring.secrets == {("tandem", "cloud-api-key"): KEY}
    assert load_api_key() == KEY
    config = load_config()
    assert config.cloud_url == "https://llm.example.org"
    assert config.privacy_terms == ["Project Falcon", "ACME"]
    p = paths()
    assert p.config_file.exists() and p.database.exists()
    for folder in (p.config_dir, p.data_dir, home):
        assert files_containing(folder, KEY.encode()) == []


async def test_without_a_keyring_the_settings_name_the_environment_variable(
    home: Path, tui_local_engine: Any
) -> None:
    keyring.set_keyring(fail.Keyring())
    app = make_app(tui_local_engine)
    async with app.run_test(size=(110, 40)) as pilot:
        screen = await _fill_settings(pilot)
        assert isinstance(app.screen, SettingsScreen)  # stays open to show why
        error = str(screen.query_one("#settings-error", Static).render())
        assert "No OS keyring" in error and ENV_VAR in error
        assert ENV_VAR in str(screen.query_one("#keyring-status", Static).render())
        assert screen.query_one("#api-key", Input).value == ""
    app.store.close()
    assert load_config().cloud_url == "https://llm.example.org"  # the rest was saved
    assert files_containing(home, KEY.encode()) == []


async def test_save_and_switch_model_keep_only_what_the_user_changed(
    home: Path, tui_local_engine: Any, test_models: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--mode`, `--max-tokens` and TANDEM_* are for one session: Settings → Save and F9 write
    the fields the user changed, and whatever the file already held, nothing else."""
    keyring.set_keyring(MemoryKeyring())
    paths().config_dir.mkdir(parents=True)
    paths().config_file.write_text('context_window = 2048\n')
    monkeypatch.setenv("TANDEM_COMPLEXITY_THRESHOLD", "0.9")
    session = with_overrides(load_config(), mode="local-only", max_tokens=99)
    app = make_app(tui_local_engine, config=session)
    async with app.run_test(size=(110, 40)) as pilot:
        await pilot.press("f3")
        await until(pilot, lambda: isinstance(app.screen, SettingsScreen))
        app.screen.query_one("#privacy-terms", Input).value = "Project Falcon"
        app.screen.action_save()  # type: ignore[attr-defined]
        await until(pilot, lambda: not isinstance(app.screen, SettingsScreen))
        assert app.config.mode == "local-only" and app.config.max_tokens == 99  # this session
        saved = tomllib.loads(paths().config_file.read_text())
        assert saved == {"context_window": 2048, "privacy_terms": ["Project Falcon"]}

        await pilot.press("f9")
        await until(pilot, lambda: app.screen.query("#prompt-input"))
        app.screen.query_one("#prompt-input", Input).value = str(test_models.target)
        await pilot.press("enter")
        await until(pilot, lambda: app.composition is not None and app.backend_ready.is_set(),
                    timeout=120)
    app.store.close()
    saved = tomllib.loads(paths().config_file.read_text())
    assert saved == {
        "context_window": 2048,
        "privacy_terms": ["Project Falcon"],
        "model": str(test_models.target),
    }
    assert not list(paths().config_dir.glob("*.tmp"))  # written whole, then renamed
