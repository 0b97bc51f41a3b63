"""The composition root: what `tandem chat` builds from the config, and what it says when it
cannot (no model, no key, a bad privacy pattern). Building loads nothing and calls no one."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keyring
import pytest
from keyring.backends import fail
from textual.widgets import Input, Static

from cloud.client import CloudClient
from local.engine import LocalEngine
from local.loading import folder_name_for
from local.models import default_model
from router.hybrid import HybridBackend
from tests.tui_support import answer, answer_views, until
from tui.app import TandemApp
from tui.commands.models import main as models_main
from tui.compose import ComposeError, Composition, build_composition
from tui.config import Config, load_config
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


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Hugging Face hub (this machine has no network anyway; this makes it quick and
    certain): the variable for child processes, the constant huggingface_hub read at import."""
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


async def test_without_a_model_or_a_network_one_line_says_what_to_do(offline: None) -> None:
    hub_id = default_model()
    app = TandemApp(store=Store.open(paths().database), config=Config())
    async with app.run_test(size=(110, 32)) as pilot:
        await until(pilot, lambda: app.backend_ready.is_set())
        line = app.boot_error
        assert line is not None and "\n" not in line
        assert hub_id in line and f"tandem models pull {hub_id}" in line and "--model" in line
        bar = app.chat.query_one(StatusBar)
        await until(pilot, lambda: "not loaded" in str(bar.render()))
        stored = await answer(pilot, "Hello?")
        assert stored.status == "error" and f"tandem models pull {hub_id}" in stored.error
        note = str(answer_views(app)[-1].query_one(".note", Static).render())
        assert "--model" in note
        assert app.chat.conversation is not None
        assert app.store.messages(app.chat.conversation.id)[0].content == "Hello?"
    assert not (paths().models_dir / folder_name_for(hub_id)).exists()


async def test_in_local_only_mode_the_default_is_not_pulled(offline: None) -> None:
    hub_id = default_model()
    app = TandemApp(store=Store.open(paths().database), config=Config(mode="local-only"))
    async with app.run_test(size=(110, 32)) as pilot:
        await until(pilot, lambda: app.backend_ready.is_set())
        line = app.boot_error
        assert line is not None and "\n" not in line
        assert f"tandem models pull {hub_id}" in line and "Local-only mode" in line
        assert not any("pulling" in str(n.message) for n in app._notifications)


@pytest.mark.mlx
async def test_without_a_model_the_chat_uses_the_pulled_default(
    test_models: Any, offline: None, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's promise: with no model configured, the default for this machine's memory
    (here: pulled already; a copy of the test model stands in for it)."""
    hub_id = default_model()
    pulled = paths().models_dir / folder_name_for(hub_id)
    shutil.copytree(test_models.target, pulled)
    assert models_main(["default"]) == 0
    assert str(pulled) in capsys.readouterr().out  # what `tandem models default` says...
    app = TandemApp(store=Store.open(paths().database), config=Config())
    async with app.run_test(size=(110, 32)) as pilot:
        await until(pilot, lambda: app.backend_ready.is_set(), timeout=120)
        assert app.boot_error is None
        assert app.composition is not None
        assert app.composition.local.model_spec == str(pulled)  # ...is what the chat loads
        assert app.composition.model_label == hub_id.split("/")[1]
        assert any(hub_id in note for note in app.composition.notes)  # shown at start
        stored = await answer(pilot, "What is the capital of France?")
        assert stored.status == "complete" and stored.content


@pytest.mark.mlx
async def test_a_pulled_model_named_by_its_hub_id_loads_offline(
    test_models: Any, offline: None, capsys: pytest.CaptureFixture[str]
) -> None:
    pulled = paths().models_dir / "org--tiny"
    shutil.copytree(test_models.target, pulled)
    assert models_main(["default", "org/tiny"]) == 0
    assert f"→ {pulled}" in capsys.readouterr().out
    app = TandemApp(store=Store.open(paths().database), config=load_config())
    async with app.run_test(size=(110, 32)) as pilot:
        await until(pilot, lambda: app.backend_ready.is_set(), timeout=120)
        assert app.boot_error is None, app.boot_error
        assert app.composition is not None
        assert app.composition.local.model_spec == str(pulled)
        assert "device tiny: ready" in str(app.chat.query_one(StatusBar).render())
        stored = await answer(pilot, "What is the capital of France?")
        assert stored.status == "complete" and stored.content


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


@pytest.mark.mlx
async def test_switching_models_keeps_one_cloud_health_poll(test_models: Any) -> None:
    built: list[Composition] = []

    def build(config: Config, *, model: str | None = None, **_: Any) -> Composition:
        engine = LocalEngine(model or test_models.target)
        cloud = CloudClient("http://127.0.0.1:9", "tk-test")  # nothing listens: offline
        comp = Composition(
            backend=HybridBackend(engine, cloud), local=engine, cloud=cloud, model_label="m"
        )
        built.append(comp)
        return comp

    app = TandemApp(
        store=Store.open(paths().database), config=Config(), model=str(test_models.target),
        build=build,
    )
    async with app.run_test(size=(110, 32)) as pilot:
        await until(pilot, lambda: app.backend_ready.is_set(), timeout=120)
        for model in (test_models.draft, test_models.target):  # F9, twice
            await pilot.press("f9")
            await until(pilot, lambda: bool(app.screen.query("#prompt-input")))
            app.screen.query_one("#prompt-input", Input).value = str(model)
            before = len(built)
            await pilot.press("enter")
            await until(
                pilot,
                lambda: len(built) > before and app.backend_ready.is_set(),  # noqa: B023
                timeout=120,
            )
        await until(pilot, lambda: app.cloud_state == "offline")
        polls = [t for t in asyncio.all_tasks() if t.get_name() == "cloud-health"]
        assert len(polls) == 1
    assert len(built) == 3
