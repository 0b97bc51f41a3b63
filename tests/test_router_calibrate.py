"""Calibration: the threshold that sends the asked share of the user's prompts to the cloud."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.calibrate import CalibrationError, calibrate, load_prompts, threshold_for_share
from router.complexity import FeatureScorer
from scripts.testmodels import ModelSet


def test_threshold_for_a_share() -> None:
    scores = [i / 10 for i in range(1, 11)]
    t = threshold_for_share(scores, 0.2)
    assert sum(s > t for s in scores) == 2
    assert threshold_for_share(scores, 0.0) == 1.0
    assert sum(s > threshold_for_share(scores, 1.0) for s in scores) == 10


def test_ties_cannot_be_split_and_the_nearer_share_wins() -> None:
    assert threshold_for_share([0.5] * 10, 0.2) == 1.0  # 0 % is nearer to 20 % than 100 %
    assert sum(s > threshold_for_share([0.5] * 10, 0.8) for s in [0.5] * 10) == 10


def test_calibrate_on_the_test_corpus_hits_the_share(test_models: ModelSet) -> None:
    prompts = load_prompts(test_models.corpus)
    result = calibrate(prompts, 0.2)
    assert result.prompts == len(prompts) > 100
    assert abs(result.achieved_share - 0.2) < 0.1
    scorer = FeatureScorer()
    above = sum(scorer.score(p) > result.threshold for p in prompts) / len(prompts)
    assert above == result.achieved_share


def test_load_prompts_formats(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    rows = [
        json.dumps("a plain string"),
        json.dumps({"prompt": "a prompt"}),
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "one"},
                    {"role": "assistant", "content": "two"},
                    {"role": "user", "content": "three"},
                ]
            }
        ),
        "a line of text",
        "",
    ]
    path.write_text("\n".join(rows))
    prompts = load_prompts(path)
    assert [p[-1].content for p in prompts] == [
        "a plain string",
        "a prompt",
        "one",
        "three",
        "a line of text",
    ]
    assert len(prompts[3]) == 3  # the second user turn comes with its history


def test_bad_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="cannot read"):
        load_prompts(tmp_path / "missing.txt")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(CalibrationError, match="holds no prompts"):
        load_prompts(empty)
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"other": 1}))
    with pytest.raises(CalibrationError, match=r"bad\.jsonl:1"):
        load_prompts(bad)
