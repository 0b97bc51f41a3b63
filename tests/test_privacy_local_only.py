"""Local-only mode: no byte leaves the machine, model downloads included. A model that is not
on disk is refused with the command that pulls it, before any engine or hub client starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from local.loading import resolve_folder
from router.protocol import ModelError
from tui.compose import ComposeError, build_composition
from tui.config import Config

MISSING = "tandem-tests/no-such-model-on-disk"


@pytest.fixture()
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    # The hub client must not reach out either way: HF_HUB_OFFLINE makes a slip fail loudly.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return tmp_path


def test_offline_resolution_refuses_a_model_not_on_disk(home: Path) -> None:
    with pytest.raises(ModelError, match=f"tandem models pull {MISSING}"):
        resolve_folder(MISSING, home / "models", offline=True)


def test_offline_resolution_finds_a_model_folder(home: Path, test_models: Any) -> None:
    folder = Path(test_models.target)
    assert resolve_folder(folder, home / "models", offline=True) == folder


@pytest.mark.parametrize("field", ["model", "draft_model"])
def test_local_only_mode_never_fetches_a_model(home: Path, test_models: Any, field: str) -> None:
    values = {"model": str(test_models.target), field: MISSING}
    with pytest.raises(ComposeError) as refused:
        build_composition(Config(mode="local-only", **values))
    message = str(refused.value)
    assert "local-only mode fetches nothing" in message
    assert f"tandem models pull {MISSING}" in message
    assert message.count("\n") == 0
