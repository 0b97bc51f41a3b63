"""The composition root: what `tandem chat` builds from the config, and what it says when it
cannot (no model, no key, a bad privacy pattern). Building loads nothing and calls no one."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keyring
import pytest
from keyring.backends import fail
from textual.widgets import Static

from cloud.client import CloudClient
from local.engine import LocalEngine
from router.hybrid import HybridBackend
from tests.tui_support import answer, answer_views, until
from tui.app import TandemApp
from tui.compose import ComposeError, build_composition
from tui.config import Config
from tui.paths import paths
from tui.secrets import ENV_VAR
from tui.store import Store
from tui.widgets.status import StatusBar


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    monkeypatch.delenv(ENV_VAR, raising=False)
    before = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    try:
        yield tmp_path
    finally:
        keyring.set_keyring(before)


def test_without_a_model_the_error_says_how_to_choose_one() -> None:
    with pytest.raises(ComposeError) as error:
        build_composition(Config())
    assert "--model" in str(error.value) and "TANDEM_MODEL" in str(error.value)


def test_the_device_alone_sits_behind_the_router(test_models: Any) -> None:
    comp = build_composition(Config(), model=str(test_models.target))
    assert isinstance(comp.local, LocalEngine) and not comp.local.ready  # not loaded yet
    assert isinstance(comp.backend, HybridBackend)
    assert comp.cloud is None and comp.notes == []
    assert comp.model_label == "target"


def test_a_cloud_without_a_key_is_off_and_the_note_names_the_variable(
    test_models: Any,
) -> None:
    config = Config(cloud_url="https://llm.example.org")
    comp = build_composition(config, model=str(test_models.target))
    assert comp.cloud is None
    assert any(ENV_VAR in note for note in comp.notes)
    assert isinstance(comp.backend, HybridBackend)
    assert comp.backend.cloud_missing == "no cloud API key"


async def test_a_cloud_with_a_key_from_the_environment_gets_a_client(
    test_models: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(ENV_VAR, "tk-from-env")
    config = Config(cloud_url="https://llm.example.org/", mode="cloud-preferred")
    comp = build_composition(config, model=str(test_models.target))
    assert isinstance(comp.cloud, CloudClient)
    assert comp.cloud.base_url == "https://llm.example.org"
    assert isinstance(comp.backend, HybridBackend)
    assert comp.backend.settings.mode == "cloud-preferred"
    await comp.aclose()


def test_an_unusable_cloud_ca_file_turns_the_cloud_off_with_a_note(
    test_models: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(ENV_VAR, "tk-from-env")
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate")
    for ca_file, says in ((tmp_path / "missing.pem", "does not exist"), (not_pem, "no usable")):
        config = Config(cloud_url="https://llm.example.org", cloud_ca_file=str(ca_file))
        comp = build_composition(config, model=str(test_models.target))
        assert comp.cloud is None
        assert any(says in note and "Settings" in note for note in comp.notes), comp.notes
        assert isinstance(comp.backend, HybridBackend)
        assert comp.backend.cloud_missing == "the cloud's CA file cannot be used"


def test_an_invalid_privacy_pattern_is_a_clear_error(test_models: Any) -> None:
    with pytest.raises(ComposeError) as error:
        build_composition(Config(privacy_patterns=["(unclosed"]), model=str(test_models.target))
    assert "Privacy settings" in str(error.value)


async def test_the_app_without_a_model_explains_and_keeps_the_message() -> None:
    app = TandemApp(store=Store.open(paths().database), config=Config())
    async with app.run_test(size=(110, 32)) as pilot:
        await until(pilot, lambda: app.boot_error is not None)
        assert "not loaded" in str(app.chat.query_one(StatusBar).render())
        stored = await answer(pilot, "Hello?")
        assert stored.status == "error" and "No model configured" in stored.error
        note = str(answer_views(app)[-1].query_one(".note", Static).render())
        assert "--model" in note
        assert app.chat.conversation is not None
        assert app.store.messages(app.chat.conversation.id)[0].content == "Hello?"


@pytest.mark.mlx
async def test_switch_model_loads_the_new_one_and_answers_with_it(test_models: Any) -> None:
    app = TandemApp(
        store=Store.open(paths().database), config=Config(), model=str(test_models.target)
    )
    async with app.run_test(size=(110, 32)) as pilot:
        await until(pilot, lambda: app.backend_ready.is_set(), timeout=120)
        assert app.boot_error is None
        first = app.composition
        await pilot.press("f9")
        await pilot.pause(0.2)
        prompt: Any = app.screen.query_one("#prompt-input")
        prompt.value = str(test_models.draft)
        await pilot.press("enter")
        await until(
            pilot, lambda: app.composition is not first and app.backend_ready.is_set(), timeout=120
        )
        assert app.boot_error is None
        assert app.composition is not None and app.composition.model_label == "draft"
        assert "device draft: ready" in str(app.chat.query_one(StatusBar).render())
        stored = await answer(pilot, "What is the capital of France?")
        assert stored.status == "complete" and stored.content
        assert stored.route is not None and stored.route.model.endswith("draft")
    assert Config().model == "" and "draft" in (paths().config_file.read_text())
