"""`tandem adapters push` says what leaves the machine and asks (or `--yes`); the exported
config names the base model without a local path."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from local.finetune.export import public_base_model
from local.finetune.registry import AdapterRecord
from tui.commands.adapters import _confirm


@pytest.mark.parametrize(
    ("base", "public"),
    [
        ("mlx-community/Qwen3-0.6B-4bit", "mlx-community/Qwen3-0.6B-4bit"),
        ("/home/ann/.local/share/tandem/models/mlx-community--Qwen3-0.6B-4bit",
         "mlx-community/Qwen3-0.6B-4bit"),
        ("/home/ann/.cache/huggingface/hub/models--Qwen--Qwen3-0.6B/snapshots/0123abc",
         "Qwen/Qwen3-0.6B"),
        ("/home/ann/work/my-model", "my-model"),
        ("~/models/falcon-notes", "falcon-notes"),
        ("C:\\Users\\ann\\models\\mine", "mine"),
    ],
)  # fmt: skip
def test_the_exported_base_model_carries_no_local_path(base: str, public: str) -> None:
    name = public_base_model(base)
    assert name.replace("\\", "/").rsplit("/", 1)[-1] == public.rsplit("/", 1)[-1]
    assert "ann" not in name and "home" not in name and "~" not in name


def _folder(tmp_path: Path) -> tuple[AdapterRecord, Path]:
    folder = tmp_path / "peft"
    folder.mkdir()
    (folder / "adapter_model.safetensors").write_bytes(b"\0" * 2048)
    (folder / "adapter_config.json").write_text(
        json.dumps({"r": 8, "base_model_name_or_path": "mlx-community/Qwen3-0.6B-4bit"})
    )
    record = AdapterRecord("support", "/home/ann/m", "h", "lora", "d", "/home/ann/chats.jsonl")
    return record, folder


def test_push_says_what_is_uploaded_and_needs_yes_without_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    record, folder = _folder(tmp_path)
    monkeypatch.setattr("sys.stdin.isatty", lambda: False)
    assert not _confirm(record, folder, "https://llm.example.org", "support", yes=False)
    out, err = capsys.readouterr()
    assert "This uploads adapter 'support' to https://llm.example.org" in out
    assert "trained on chats.jsonl" in out and "rank 8" in out and "/home/ann" not in out
    assert "pass --yes" in err
    assert _confirm(record, folder, "https://llm.example.org", "support", yes=True)


def test_push_asks_and_a_no_uploads_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    record, folder = _folder(tmp_path)
    monkeypatch.setattr("sys.stdin.isatty", lambda: True)
    monkeypatch.setattr("builtins.input", lambda _: "n")
    assert not _confirm(record, folder, "https://llm.example.org", "support", yes=False)
    assert "not uploaded" in capsys.readouterr().out
    monkeypatch.setattr("builtins.input", lambda _: "y")
    assert _confirm(record, folder, "https://llm.example.org", "support", yes=False)
