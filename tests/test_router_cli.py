"""`tandem router calibrate` and `tandem router explain` as a user runs them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _tandem(home: Path, *args: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TANDEM_HOME": str(home), **env_extra}
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", *args],
        capture_output=True, text=True, timeout=60, env=env, cwd=REPO_ROOT,
    )  # fmt: skip


def test_calibrate_writes_the_threshold_into_the_config(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    lines = [f"What is the capital of country number {i}?" for i in range(8)]
    lines += [
        "Think carefully, step by step: prove the theorem and write a Python function for it.",
        "Compare the trade-offs of two sorting algorithms in detail and implement both in Rust.",
    ]
    prompts.write_text("\n".join(lines))
    result = _tandem(
        tmp_path, "router", "calibrate", "--prompts", str(prompts), "--cloud-share", "0.2"
    )
    assert result.returncode == 0, result.stderr
    assert "20.0% of your 10 prompts would go to the cloud" in result.stdout
    config = tomllib.loads((tmp_path / "config" / "config.toml").read_text())
    threshold = config["complexity_threshold"]
    explain = _tandem(tmp_path, "router", "explain", "--json", "--mode", "auto", lines[-1])
    # No cloud configured in this home: the explanation says so instead of the score.
    assert json.loads(explain.stdout)["rule"] == "cloud-unavailable"
    assert 0 < threshold < 1


def test_calibrate_saves_only_the_threshold_not_the_shells_settings(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(["What is two plus two?", "Prove it step by step in Rust."] * 3))
    config_file = tmp_path / "config" / "config.toml"
    config_file.parent.mkdir(parents=True)
    config_file.write_text('mode = "auto"\n')
    result = _tandem(tmp_path, "router", "calibrate", "--prompts", str(prompts),
                     TANDEM_MAX_TOKENS="77", TANDEM_MODE="local-only")  # fmt: skip
    assert result.returncode == 0, result.stderr
    config = tomllib.loads(config_file.read_text())
    assert "complexity_threshold" in config
    assert "max_tokens" not in config and config.get("mode", "auto") == "auto"


def test_calibrate_with_a_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    result = _tandem(tmp_path, "router", "calibrate", "--prompts", str(tmp_path / "nope.txt"))
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and "cannot read" in result.stderr
    assert not (tmp_path / "config" / "config.toml").exists()


def test_explain_shows_the_decision_and_the_reason(tmp_path: Path) -> None:
    result = _tandem(tmp_path, "router", "explain", "my card is 4111 1111 1111 1111")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(
        "this device  [privacy]  payment card number in message 1 → kept on this device"
    )
