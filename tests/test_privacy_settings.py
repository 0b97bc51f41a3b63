"""The two privacy settings: privacy_region (several allowed; empty: the locale's) and
privacy_action (keep-local | redact), in the config file, TANDEM_* and the Settings screen
(Textual's pilot, on a host app of its own: the screen needs no engine)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from textual.app import App
from textual.widgets import Input, Select

from router.privacy_region import check_regions, locale_region
from tui.compose import router_settings
from tui.config import Config, ConfigError, load_config
from tui.screens.settings import SettingsScreen


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    for name in ("TANDEM_PRIVACY_REGION", "TANDEM_PRIVACY_ACTION"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


def test_the_defaults_keep_private_data_on_the_device(home: Path) -> None:
    config = load_config()
    assert (config.privacy_region, config.privacy_action) == ([], "keep-local")
    settings = router_settings(config)
    assert settings.privacy_action == "keep-local" and settings.privacy_regions == ()


def test_environment_values_reach_the_router(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TANDEM_PRIVACY_REGION", "gb, de")
    monkeypatch.setenv("TANDEM_PRIVACY_ACTION", "redact")
    settings = router_settings(load_config())
    assert settings.privacy_action == "redact"
    assert check_regions(settings.privacy_regions) == ("GB", "DE")


def test_bad_values_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="privacy_action must be one of keep-local, redact"):
        Config(privacy_action="upload")
    with pytest.raises(ConfigError, match="is not a region code"):
        Config(privacy_region=["Germany"])


def test_the_default_region_comes_from_the_locale(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LC_ALL", "de_DE.UTF-8")
    assert locale_region() == "DE"
    monkeypatch.setenv("LC_ALL", "C")
    monkeypatch.setenv("LANG", "C.UTF-8")
    monkeypatch.delenv("LC_MESSAGES", raising=False)
    assert locale_region() in ("US", os.environ.get("LANG", "")[3:5].upper())


class Host(App[None]):
    """Hosts the settings screen alone."""

    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config
        self.result: Any = "not closed"

    def on_mount(self) -> None:
        def done(result: Any) -> None:
            self.result = result

        self.push_screen(SettingsScreen(self.config), done)


async def test_the_settings_screen_saves_region_and_action(home: Path) -> None:
    app = Host(load_config())
    async with app.run_test(size=(110, 60)) as pilot:
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, SettingsScreen)
        screen.query_one("#privacy-region", Input).value = "gb, DE"
        screen.query_one("#privacy-action", Select).value = "redact"
        screen.action_save()
        await pilot.pause()
    assert isinstance(app.result, Config) and app.result.privacy_action == "redact"
    saved = load_config()
    assert (saved.privacy_region, saved.privacy_action) == (["GB", "DE"], "redact")
    text = (home / "config" / "config.toml").read_text()
    assert "privacy_action" in text and "mode" not in text  # only what changed is written
