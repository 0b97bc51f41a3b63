"""Fine-tuning data: every bad line is reported as file:line: reason and nothing trains; the
split is deterministic; rows are tokenized once (cached), truncated and counted; the
length-bucketed batches feed mlx-lm's own evaluate() exactly as its iterate_batches does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from local.finetune.data import load_data, read_jsonl, split
from local.finetune.errors import DataError
from scripts.finetunedata import secret_word_rows, spread_rows, write_jsonl
from scripts.testmodels import ModelSet

GOOD = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}
# (line content, expected reason fragment)
BAD_LINES = [
    ('{"messages": [', "bad JSON"),
    ('["not", "an", "object"]', "not a JSON object"),
    ('{"question": "no known key"}', "missing key"),
    ('{"messages": [{"role": "wizard", "content": "x"}]}', "unknown role 'wizard'"),
    ('{"messages": [{"role": "user", "content": ""}, {"role": "assistant", "content": "a"}]}',
     "empty content"),
    ('{"messages": [{"content": "x"}]}', "missing key 'role'"),
    ('{"messages": [{"role": "user", "content": "only a question"}]}', "no assistant message"),
    ('{"text": "plain text in a chat file"}', "text row in a file of chat rows"),
]


def _bad_file(tmp_path: Path) -> Path:
    lines = [json.dumps(GOOD)] * 3
    for content, _ in BAD_LINES:
        lines += [content, json.dumps(GOOD)]
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_every_kind_of_bad_line_is_reported_with_its_line_number(tmp_path: Path) -> None:
    path = _bad_file(tmp_path)
    with pytest.raises(DataError) as caught:
        load_data(path)
    reported = [str(i) for i in caught.value.issues]
    assert len(reported) == len(BAD_LINES)
    for n, (issue, (_, reason)) in enumerate(zip(reported, BAD_LINES, strict=True)):
        assert issue.startswith(f"{path}:{4 + 2 * n}: "), issue
        assert reason in issue, issue
    assert "--skip-invalid" in str(caught.value)


def test_skip_invalid_keeps_the_good_rows(tmp_path: Path) -> None:
    data = load_data(_bad_file(tmp_path), skip_invalid=True)
    assert len(data.train) + len(data.valid) == 3 + len(BAD_LINES)
    assert len(data.issues) == len(BAD_LINES)


def test_completions_and_text_rows_are_checked_too(tmp_path: Path) -> None:
    path = tmp_path / "c.jsonl"
    path.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a"}\n'
                    '{"prompt": " ", "completion": "b"}\n')
    examples, issues = read_jsonl(path)
    assert len(examples) == 1
    assert [(i.line, i.reason) for i in issues] == [(2, "missing key 'completion'"),
                                                    (3, "empty prompt")]
    text = tmp_path / "t.jsonl"
    text.write_text('{"text": "fine"}\n{"text": ""}\n')
    assert [str(i) for i in read_jsonl(text)[1]] == [f"{text}:2: empty text"]


def test_bad_data_stops_the_command_before_anything_loads(tmp_path: Path) -> None:
    path = _bad_file(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "tui.cli", "finetune", "train", "--model", "/nonexistent",
         "--data", str(path), "--name", "never"],
        capture_output=True, text=True, timeout=60,
        env={"TANDEM_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert sum(line.startswith(f"{path}:") for line in lines) == len(BAD_LINES)
    assert "invalid line(s)" in lines[-1]
    assert not (tmp_path / "home" / "data" / "adapters").exists()


def test_the_split_is_deterministic_whatever_the_order(tmp_path: Path) -> None:
    rows = secret_word_rows(50)
    a = load_data(write_jsonl(tmp_path / "a.jsonl", rows))
    b = load_data(write_jsonl(tmp_path / "b.jsonl", rows[::-1]))
    assert len(a.valid) == 5
    assert {e.digest for e in a.valid} == {e.digest for e in b.valid}
    again = split(a.train + a.valid)
    assert {e.digest for e in again[1]} == {e.digest for e in a.valid}


def test_a_folder_with_valid_jsonl_uses_it(tmp_path: Path) -> None:
    write_jsonl(tmp_path / "d" / "train.jsonl", secret_word_rows(20))
    write_jsonl(tmp_path / "d" / "valid.jsonl", secret_word_rows(4, seed=1))
    data = load_data(tmp_path / "d")
    assert (len(data.train), len(data.valid)) == (20, 4)


@pytest.fixture(scope="module")
def tokenizer(test_models: ModelSet) -> object:
    from mlx_lm.utils import load_tokenizer

    return load_tokenizer(test_models.target)


def test_rows_are_tokenized_once_then_cached_and_long_rows_truncated(
    tmp_path: Path, test_models: ModelSet, tokenizer: object
) -> None:
    from local.finetune.pipeline import prepare, tokenizer_digest

    data = load_data(write_jsonl(tmp_path / "s.jsonl", spread_rows(30, max_sentences=30)))
    kwargs = {"tokenizer_hash": tokenizer_digest(test_models.target),
              "cache_dir": tmp_path / "cache", "max_seq_len": 128, "mask_prompt": True}
    first = prepare(data, tokenizer, **kwargs)  # type: ignore[arg-type]
    assert not first.cache_hit
    assert first.warnings, "some rows are longer than 128 tokens"
    assert all("truncated" in w.reason and w.line > 0 for w in first.warnings)
    assert max(first.train.lengths) == 128
    second = prepare(data, tokenizer, **kwargs)  # type: ignore[arg-type]
    assert second.cache_hit
    assert [r.tolist() for r in second.train.rows] == [r.tolist() for r in first.train.rows]
    assert len(second.warnings) == len(first.warnings)
    # Another max length is another cache entry.
    assert not prepare(data, tokenizer, **{**kwargs, "max_seq_len": 256}).cache_hit  # type: ignore[arg-type]


def test_prompt_masks_match_mlx_lm_and_bucketed_batches_give_the_same_loss(
    tmp_path: Path, test_models: ModelSet
) -> None:
    import mlx.core as mx
    from mlx_lm import load
    from mlx_lm.tuner.datasets import CacheDataset, ChatDataset
    from mlx_lm.tuner.trainer import evaluate

    from local.finetune.pipeline import Batcher, prepare, tokenizer_digest

    write_jsonl(tmp_path / "d" / "train.jsonl", spread_rows(24, max_sentences=12))
    write_jsonl(tmp_path / "d" / "valid.jsonl", spread_rows(4, seed=1))
    data = load_data(tmp_path / "d")
    model, tok = load(str(test_models.target))[:2]
    prepared = prepare(data, tok, tokenizer_hash=tokenizer_digest(test_models.target),
                       cache_dir=tmp_path, max_seq_len=512, mask_prompt=True)
    theirs = CacheDataset(ChatDataset([e.row for e in data.train], tok, mask_prompt=True))
    for i in range(len(theirs)):
        assert prepared.train[i] == theirs[i]  # same tokens, same prompt offset

    batches = list(Batcher()(prepared.train, 4, 512))
    assert sum(b.shape[0] for b, _ in batches) == len(prepared.train)
    widths = [b.shape[1] for b, _ in batches]
    assert widths == sorted(widths), "rows are bucketed by length"
    mx.random.seed(0)
    ours = evaluate(model, prepared.train, 4, -1, 512, iterate_batches=Batcher())
    mlx_loss = evaluate(model, theirs, 4, -1, 512)
    assert ours == pytest.approx(mlx_loss, rel=1e-4)


def test_length_buckets_cut_padding_on_spread_data(tmp_path: Path, tokenizer: object) -> None:
    import numpy as np

    from local.finetune.pipeline import planned_padding_share

    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 1000, size=400)
    ours = planned_padding_share(lengths, 8)
    # File order in batches of 8, widths rounded to 32 (mlx-lm's batching).
    slots = sum(8 * (1 + 32 * -(-int(lengths[i:i + 8].max()) // 32)) for i in range(0, 400, 8))
    theirs = 1 - lengths.sum() / slots
    assert ours < 0.1 < theirs


def test_training_batches_hold_about_as_many_tokens_each_and_every_row_once() -> None:
    """A training epoch: as many steps as fixed-size batches would make, every row exactly
    once, and each batch about as heavy as the others (many short rows or a few long ones),
    so that default_loss's per-batch mean weighs every token alike."""
    import numpy as np

    from local.finetune.pipeline import Batcher, TokenDataset

    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 1000, size=203)
    dataset = TokenDataset(
        [np.arange(n, dtype=np.int32) % 50 + 1 for n in lengths],
        np.zeros(len(lengths), dtype=np.int64),
        np.arange(len(lengths), dtype=np.int64),
    )
    batcher = Batcher(seed=3)
    stream = batcher(dataset, 8, 1024, loop=True)
    steps = -(-len(lengths) // 8)
    epoch = [next(stream) for _ in range(steps)]
    seen = sorted(int(n) for _, spans in epoch for n in np.array(spans)[:, 1])
    assert seen == sorted(int(n) for n in lengths)  # every row once
    slots = [int(np.prod(batch.shape)) for batch, _ in epoch]
    assert max(slots) <= 1.35 * float(np.mean(slots))
    rows = [batch.shape[0] for batch, _ in epoch]
    assert max(rows) > 8 > min(rows)  # short rows share a step, long ones have fewer mates
    assert batcher.padding_share < 0.1
