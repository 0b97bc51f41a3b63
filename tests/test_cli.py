"""The `tandem` command: help with only the base install, one line for a missing extra."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tui.cli import COMMANDS, OPTIONAL_PACKAGES

# Make every optional package unimportable, as on a base install.
BLOCK = "import sys\nfor name in {names!r}: sys.modules[name] = None\n"


def _run_blocked(code: str) -> subprocess.CompletedProcess[str]:
    script = BLOCK.format(names=sorted(OPTIONAL_PACKAGES)) + code
    return subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )


def test_help_lists_every_command_with_only_the_base_install() -> None:
    result = _run_blocked("from tui.cli import main\nsys.exit(main(['--help']))")
    assert result.returncode == 0, result.stderr
    for command in COMMANDS:
        assert command.name in result.stdout


def test_a_missing_extra_is_one_line_naming_the_extra() -> None:
    result = _run_blocked("from tui.cli import main\nsys.exit(main(['chat', '--model', 'x']))")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "pip install 'tandem[desktop]'" in lines[0]
    assert "Traceback" not in result.stderr


def test_an_unknown_command_is_a_clear_error() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "tui.cli", "frobnicate"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "unknown command 'frobnicate'" in result.stderr


def test_the_installed_console_script_prints_help() -> None:
    result = subprocess.run(
        [str(Path(sys.executable).parent / "tandem"), "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    assert "usage: tandem" in result.stdout
