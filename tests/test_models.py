"""`tandem models` and local/models.py: listing, the default by memory, the memory guard, and
pulling while the hub cannot be reached."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from local.models import (
    ModelTooLarge,
    check_fits,
    default_model,
    estimate_memory,
    list_models,
    resolve,
)
from scripts.testmodels import ModelSet
from tui.commands.models import main

GiB = 2**30


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def test_the_default_model_follows_the_memory_table() -> None:
    assert default_model(8 * GiB) == "mlx-community/Qwen3-0.6B-4bit"
    assert default_model(16 * GiB) == "mlx-community/Qwen3-4B-4bit"
    assert default_model(32 * GiB) == "mlx-community/Qwen3-8B-4bit"
    assert default_model(128 * GiB) == "mlx-community/Qwen3-8B-4bit"


def test_the_estimate_is_weights_plus_kv_cache_for_the_context(test_models: ModelSet) -> None:
    estimate = estimate_memory(test_models.target, 4096)
    weights = (test_models.target / "model.safetensors").stat().st_size
    # 3 layers × 1 KV head × head_dim 64 × (keys + values) × 4 bytes (float32) × 4096 tokens
    assert estimate.weights_bytes == weights
    assert estimate.kv_bytes == 3 * 1 * 64 * 2 * 4 * 4096
    assert estimate_memory(test_models.target, 1024).kv_bytes == estimate.kv_bytes // 4


def test_the_memory_guard_refuses_with_what_is_needed_and_what_to_try(
    test_models: ModelSet,
) -> None:
    with pytest.raises(ModelTooLarge) as caught:
        check_fits(test_models.target, available_bytes=200 * 10**6)
    message = str(caught.value)
    assert "needs 0.0 GB" in message and "0.2 GB available; try" in message
    assert caught.value.needed > 0 and caught.value.available == 200 * 10**6
    # Plenty of memory: accepted, and the estimate comes back.
    assert check_fits(test_models.target, available_bytes=16 * GiB).total > 0


def test_list_shows_size_bits_and_context(
    home: Path, test_models: ModelSet, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["list"]) == 0
    assert "no models in" in capsys.readouterr().out
    models = home / "data" / "models"
    shutil.copytree(test_models.target, models / "org--tiny")
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("org/tiny"))
    assert "MB" in line and "float32" in line and "4096" in line and "llama" in line
    [info] = list_models(models)
    assert info.bits is None and info.context_window == 4096
    assert resolve("org/tiny", models) == str(models / "org--tiny")
    assert resolve("other/model", models) == "other/model"


def test_default_can_be_set_and_reset(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["default"]) == 0
    assert "default for" in capsys.readouterr().out
    assert main(["default", "org/tiny"]) == 0
    assert capsys.readouterr().out.startswith("org/tiny (set in")
    assert 'model = "org/tiny"' in (home / "config" / "config.toml").read_text()
    assert main(["default", "--reset"]) == 0
    assert "default for" in capsys.readouterr().out


@pytest.mark.parametrize(
    "env", [{"HF_HUB_OFFLINE": "1"}, {"HF_ENDPOINT": "http://127.0.0.1:9"}], ids=["offline", "down"]
)
def test_pull_without_the_hub_says_so_in_one_line(tmp_path: Path, env: dict[str, str]) -> None:
    environ = {**os.environ, "TANDEM_HOME": str(tmp_path), **env}
    environ.pop("LD_PRELOAD", None)
    done = subprocess.run(
        [sys.executable, "-m", "tui.cli", "models", "pull", "mlx-community/Qwen3-0.6B-4bit"],
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "cannot reach the Hugging Face hub" in lines[0]
    assert "--model PATH" in lines[0]
    assert not (tmp_path / "data" / "models" / "mlx-community--Qwen3-0.6B-4bit").exists()


def test_a_pull_reports_the_bytes_on_disk_as_they_arrive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chat shows a pull's progress: bytes huggingface_hub has written so far (its
    `.incomplete` files count) against the repository's size (0: unknown, e.g. offline)."""
    import time

    import huggingface_hub.constants

    from local.models import _PullWatcher

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    seen: list[tuple[int, int]] = []
    watcher = _PullWatcher("org/tiny", None, tmp_path, lambda d, t: seen.append((d, t)))
    try:
        (tmp_path / ".cache").mkdir()
        (tmp_path / ".cache" / "model.safetensors.incomplete").write_bytes(b"x" * 1000)
        deadline = time.monotonic() + 30
        while not any(done >= 1000 for done, _ in seen):
            assert time.monotonic() < deadline, seen
            time.sleep(0.05)
    finally:
        watcher.stop()
    assert seen[-1] == (1000, 0)
