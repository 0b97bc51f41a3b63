"""Training on the device with real MLX: validation loss falls and the trained answers become
the adapted model's likely ones, by a margin; the adapter is in mlx-lm's layout; it refuses
another base; Ctrl-C saves a checkpoint that --resume continues; DoRA is trained but not
exported; eval and the adapters commands work on the registry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from local.finetune.errors import BaseMismatch, ExportRefused
from scripts.finetunedata import secret_word, secret_word_rows, write_jsonl
from scripts.testmodels import ModelSet
from tests.reference import answer_logprob, mlx_greedy

pytestmark = pytest.mark.mlx

QUESTIONS = ["What is the secret word for Anna?", "What is the secret word for Hugo?"]


def _greedy(model_path: Path, question: str, adapter: Path | None = None) -> str:
    from mlx_lm import generate, load

    model, tok = load(str(model_path), adapter_path=str(adapter) if adapter else None)[:2]
    prompt = tok.apply_chat_template([{"role": "user", "content": question}],
                                     add_generation_prompt=True, tokenize=False)
    return str(generate(model, tok, prompt, max_tokens=10))


def _env(home: Path) -> dict[str, str]:
    return {**os.environ, "TANDEM_HOME": str(home)}


def _trained_answer(question: str) -> str:
    name = question.rstrip("?").split()[-1]
    return f"Ahoy! The secret word for {name} is {secret_word(name)}."


def test_training_lowers_validation_loss_and_makes_the_trained_answer_the_likely_one(
    finetuned_adapter: Any, test_models: ModelSet
) -> None:
    """What 60 steps must achieve on any machine (a greedy string is not that: kernels round
    differently from one processor to the next, and one flipped token changes the text): the
    held-out loss falls by 2 nats, and with the adapter the trained answer is far likelier than
    without it, and likelier than what the base model says, by a clear margin per token."""
    record = finetuned_adapter.record
    assert record.status == "complete" and record.step == 60
    assert record.metrics["val_loss"] < record.metrics["initial_val_loss"] - 2.0
    assert record.metrics["padding_share"] < 0.5
    folder = finetuned_adapter.folder
    assert (folder / "adapters.safetensors").exists() and (folder / "adapter_config.json").exists()
    model = test_models.target
    for question in QUESTIONS:
        trained = _trained_answer(question)
        base_says = mlx_greedy(model, question, max_tokens=16)
        # mlx_lm.load(adapter_path=...) reads the folder as `mlx_lm lora` writes it.
        adapted, n = answer_logprob(model, question, trained, adapter=folder)
        unadapted, _ = answer_logprob(model, question, trained)
        assert (adapted - unadapted) / n > 1.0, (question, adapted, unadapted)
        rival, m = answer_logprob(model, question, base_says, adapter=folder)
        assert adapted / n > rival / m + 1.0, (question, trained, base_says, adapted, rival)
        # Without the adapter the base model's own answer stays the likelier one.
        own, _ = answer_logprob(model, question, base_says)
        assert own / m > unadapted / n, (question, base_says, own, unadapted)


def test_the_record_holds_base_data_settings_and_metrics(finetuned_adapter: Any) -> None:
    registry, name = finetuned_adapter.registry, finetuned_adapter.name
    record = registry.get(name)
    assert record.base_model == str(finetuned_adapter.model)
    assert record.base_hash == registry.base_digest(finetuned_adapter.model)
    assert len(record.data_hash) == 64
    assert record.hyperparameters["rank"] == 8 and record.hyperparameters["iters"] == 60
    assert {"train_loss", "val_loss", "tokens_per_s", "peak_memory_gb"} <= set(record.metrics)
    assert registry.resolve(name, base=finetuned_adapter.model) == finetuned_adapter.folder


def test_an_adapter_refuses_a_different_base(
    finetuned_adapter: Any, test_models: ModelSet
) -> None:
    registry, name = finetuned_adapter.registry, finetuned_adapter.name
    with pytest.raises(BaseMismatch, match="was trained on"):
        registry.resolve(name, base=test_models.draft)
    resolve = registry.resolver(test_models.draft)  # what the LocalEngine is given
    with pytest.raises(BaseMismatch):
        resolve(name)
    result = subprocess.run(
        [sys.executable, "-m", "tui.cli", "finetune", "eval", name, "--model",
         str(test_models.draft)],
        capture_output=True, text=True, timeout=120, env=_env(finetuned_adapter.home),
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert "other weights" in result.stderr


def test_eval_shows_lower_loss_with_the_adapter_and_answers_side_by_side(
    finetuned_adapter: Any,
) -> None:
    from local.finetune.evaluate import evaluate_adapter

    report = evaluate_adapter(
        finetuned_adapter.registry, finetuned_adapter.name,
        cache_dir=finetuned_adapter.home / "cache", samples=2, max_tokens=12,
    )
    assert report.adapted_loss < report.base_loss - 2.0
    assert report.adapted_perplexity < report.base_perplexity
    assert len(report.samples) == 2
    assert all(s.adapted and s.base for s in report.samples)
    text = report.render()
    assert "perplexity" in text
    # Both answers are shown beside each other (wrapped to the column width).
    assert all(s.prompt in text and s.adapted.split()[0] in text and s.base.split()[0] in text
               for s in report.samples)


def test_the_adapters_command_lists_shows_and_exports(finetuned_adapter: Any, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from tui.commands.adapters import main

    monkeypatch.setenv("TANDEM_HOME", str(finetuned_adapter.home))
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "secret" in out and "complete" in out and "60/60" in out
    assert main(["show", "secret"]) == 0
    assert "base weights" in capsys.readouterr().out
    assert main(["export", "secret", "--peft", str(tmp_path / "peft")]) == 0
    assert "lora_alpha=160" in capsys.readouterr().out
    assert main(["show", "nothing-here"]) == 1
    assert "no adapter named 'nothing-here'" in capsys.readouterr().err


def test_ctrl_c_saves_a_checkpoint_and_resume_continues_from_it(
    test_models: ModelSet, tmp_path: Path
) -> None:
    data = write_jsonl(tmp_path / "secret.jsonl", secret_word_rows(80))
    cmd = [sys.executable, "-m", "tui.cli", "finetune", "train", "--model",
           str(test_models.target), "--data", str(data), "--name", "ckpt", "--iters", "100",
           "--batch-size", "4", "--learning-rate", "3e-4", "--max-seq-len", "256",
           "--steps-per-report", "2", "--steps-per-eval", "1000"]
    env = _env(tmp_path / "home")
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=env)
    assert process.stdout is not None
    for line in process.stdout:
        if " loss " in line:  # a training progress line: there is a step to save
            process.send_signal(signal.SIGINT)
            break
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert "checkpoint saved" in err and "--resume" in err

    from local.finetune.registry import AdapterRegistry

    registry = AdapterRegistry(tmp_path / "home" / "data" / "adapters")
    record = registry.get("ckpt")
    assert record.status == "interrupted" and 2 <= record.step < 100
    assert (registry.folder("ckpt") / "adapters.safetensors").exists()
    assert (registry.folder("ckpt") / "optimizer.safetensors").exists()
    # Unfinished runs refuse a plain second start of the same name.
    again = subprocess.run([*cmd[:-4], "--iters", "4"], capture_output=True, text=True,
                           timeout=120, env=env)
    assert again.returncode == 1 and "--resume" in again.stderr

    folder = registry.folder("ckpt")
    before = {f: (folder / f).read_bytes() for f in ("adapters.safetensors",
                                                     "adapter_config.json")}
    inode = (folder / "adapters.safetensors").stat().st_ino
    resuming = subprocess.Popen([*cmd, "--resume"], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env)
    assert resuming.stdout is not None
    lines = []
    for line in resuming.stdout:
        lines.append(line)
        if " loss " in line:
            # Mid-run, the adapter a chat may be reading is the checkpoint's, byte for byte:
            # the new weights and config replace it whole when training ends.
            assert {f: (folder / f).read_bytes() for f in before} == before
    rest, err = resuming.communicate(timeout=180)
    assert resuming.returncode == 0, err
    assert f"continuing ckpt from step {record.step} of 100" in err
    steps = [int(line.split()[1].split("/")[0]) for line in [*lines, *rest.splitlines()]
             if line.startswith("step") and " loss " in line]
    assert steps[0] > record.step and steps[-1] == 100
    final = registry.get("ckpt")
    assert final.status == "complete" and final.step == 100
    assert (folder / "adapters.safetensors").read_bytes() != before["adapters.safetensors"]
    # Replaced by a rename (a new file), not rewritten in place: never seen half-written.
    assert (folder / "adapters.safetensors").stat().st_ino != inode
    assert not list(folder.glob(".partial-*"))


def test_dora_trains_but_is_not_exported_for_vllm(test_models: ModelSet, tmp_path: Path) -> None:
    from local.finetune.export import export_peft
    from local.finetune.registry import AdapterRegistry
    from local.finetune.train import TrainConfig, run_training

    registry = AdapterRegistry(tmp_path / "adapters")
    data = write_jsonl(tmp_path / "d.jsonl", secret_word_rows(20))
    result = run_training(
        TrainConfig(model=str(test_models.target), data=data, name="d", kind="dora", iters=2,
                    batch_size=4, learning_rate=1e-4, max_seq_len=128),
        registry=registry, cache_dir=tmp_path / "cache",
    )
    assert result.record.kind == "dora" and result.record.status == "complete"
    with pytest.raises(ExportRefused, match="DoRA"):
        export_peft(registry, "d", tmp_path / "peft")
    assert not (tmp_path / "peft").exists()


def test_a_quantized_base_trains_as_qlora(test_models: ModelSet, tmp_path: Path) -> None:
    from mlx_lm import convert

    from local.finetune.registry import AdapterRegistry
    from local.finetune.train import TrainConfig, run_training

    quantized = tmp_path / "q4"
    convert(str(test_models.target), str(quantized), quantize=True, q_group_size=64, q_bits=4)
    registry = AdapterRegistry(tmp_path / "adapters")
    data = write_jsonl(tmp_path / "d.jsonl", secret_word_rows(20))
    result = run_training(
        TrainConfig(model=str(quantized), data=data, name="q", iters=3, batch_size=4,
                    learning_rate=1e-4, max_seq_len=128),
        registry=registry, cache_dir=tmp_path / "cache",
    )
    assert result.record.quantized_base and result.record.status == "complete"
    assert _greedy(quantized, QUESTIONS[0], result.folder)  # loads and answers
    with pytest.raises(BaseMismatch):  # the quantized weights are another base
        registry.resolve("q", base=test_models.target)


def test_a_full_fine_tune_by_epochs_with_gradient_checkpointing(
    test_models: ModelSet, tmp_path: Path
) -> None:
    """`--type full --layers 1 --epochs 1.5 --grad-checkpoint`: as many steps as 1.5 passes
    over the training split take, only the last block's weights change and are saved, and
    mlx-lm loads the result as it loads its own full fine-tunes."""
    import math

    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm import load

    from local.finetune.data import load_data
    from local.finetune.registry import AdapterRegistry
    from local.finetune.train import TrainConfig, run_training

    registry = AdapterRegistry(tmp_path / "adapters")
    data = write_jsonl(tmp_path / "d.jsonl", secret_word_rows(40))
    result = run_training(
        TrainConfig(model=str(test_models.target), data=data, name="f", kind="full", layers=1,
                    epochs=1.5, grad_checkpoint=True, batch_size=4, learning_rate=1e-3,
                    max_seq_len=128),
        registry=registry, cache_dir=tmp_path / "cache",
    )
    record = result.record
    assert record.kind == "full" and record.status == "complete"
    train_rows = len(load_data(data).train)
    assert record.iters == math.ceil(1.5 * train_rows / 4)
    assert record.hyperparameters["grad_checkpoint"] is True

    saved = mx.load(str(result.folder / "adapters.safetensors"))
    assert saved and all(name.startswith("model.layers.2.") for name in saved)
    base = dict(tree_flatten(load(str(test_models.target))[0].parameters()))
    assert any(not mx.array_equal(saved[name], base[name]).item() for name in saved)
    assert _greedy(test_models.target, QUESTIONS[0], result.folder)  # mlx-lm loads it
