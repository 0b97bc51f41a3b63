"""`tandem privacy test` and the privacy lines of `tandem router explain`, as a user runs them
(a fresh TANDEM_HOME each: the user's config decides the scanner's terms and regions)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def _tandem(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tui.cli", *args],
        capture_output=True, text=True, timeout=60, cwd=REPO_ROOT,
        env={**os.environ, "TANDEM_HOME": str(home), **env},
    )  # fmt: skip


def _rows(path: Path, rows: list[tuple[str, bool, str]]) -> Path:
    path.write_text(
        "\n".join(
            json.dumps({"messages": [{"role": "user", "content": t}], "private": p, "kind": k})
            for t, p, k in rows
        )
        + "\n"
    )
    return path


ROWS = [
    ("mail me at jane.doe@fastmail.com", True, "email"),
    ("write to user@example.com", False, "email"),
    ("ruf mich an: 030 1234567", True, "phone"),  # German national format
    ("call 555-0142", False, "phone"),  # fictional
    ("ask Ann about it", True, "term"),
]


def test_privacy_test_prints_recall_precision_and_the_misses(tmp_path: Path) -> None:
    file = _rows(tmp_path / "mine.jsonl", ROWS)
    result = _tandem(tmp_path, "privacy", "test", str(file), TANDEM_PRIVACY_REGION="US")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "5 rows" in out and "regions: US" in out
    assert "Missed (2: private" in out
    assert "line 3 [phone]" in out and "line 5 [term]" in out
    # With the user's region and terms from the config, nothing is missed.
    (tmp_path / "config").mkdir(exist_ok=True)
    (tmp_path / "config" / "config.toml").write_text(
        'privacy_terms = ["Ann"]\nprivacy_region = ["US", "DE"]\n'
    )
    data = json.loads(_tandem(tmp_path, "privacy", "test", "--json", str(file)).stdout)
    assert data["misses"] == [] and data["false_alarms"] == []
    assert data["kinds"]["all"] == {"recall": 1.0, "precision": 1.0, "private": 3,
                                    "lookalikes": 2}  # fmt: skip


def test_privacy_test_names_the_bad_line(tmp_path: Path) -> None:
    file = tmp_path / "bad.jsonl"
    file.write_text('{"messages": [{"role": "user", "content": "hi"}], "private": true}\nnope\n')
    result = _tandem(tmp_path, "privacy", "test", str(file))
    assert result.returncode == 1
    assert f"{file}:2: not JSON" in result.stderr and result.stderr.count("\n") == 1


def test_router_explain_lists_each_finding(tmp_path: Path) -> None:
    text = "my card is 4111 1111 1111 1111, mail jane.doe@fastmail.com"
    result = _tandem(tmp_path, "router", "explain", text)
    assert result.returncode == 0, result.stderr
    assert "  private: card (payment card number) in message 1" in result.stdout
    assert "  private: email (email address) in message 1" in result.stdout
    redacting = _tandem(
        tmp_path, "router", "explain", "--json", "--mode", "cloud-preferred", text,
        TANDEM_PRIVACY_ACTION="redact", TANDEM_CLOUD_URL="https://llm.example.org",
    )  # fmt: skip
    data = json.loads(redacting.stdout)
    assert (data["side"], data["redact"]) == ("cloud", True)
    assert data["redacted"] == "2 items redacted: payment card number, email address"
    assert {f["kind"] for f in data["findings"]} == {"card", "email"}
