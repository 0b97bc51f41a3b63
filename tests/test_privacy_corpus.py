"""The scanner on the labelled corpus in tests/data (scripts/privacycorpus.py writes it): every
family of the issue, half the rows look-alikes, private data in earlier turns and in system
prompts, a quarter written with Unicode spaces, dashes, wide forms or zero-width characters.

The scanner is plain code, so the counts are exact on any machine; the thresholds leave a
margin below what it reaches today (100 % on this corpus, which was written beside the
scanner: `tandem privacy test` is how a user checks it on data nobody tuned it to)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.privacy import KINDS, PrivacyScanner
from router.privacy_eval import evaluate, load_cases

CORPUS = Path(__file__).parent / "data" / "privacy_corpus.jsonl"
# The regions the corpus's national phone numbers are written for.
REGIONS = ("US", "GB", "DE", "FR")
MIN_RECALL = 0.95
MIN_PRECISION = 0.95


@pytest.fixture(scope="module")
def report():  # type: ignore[no-untyped-def]
    return evaluate(PrivacyScanner(regions=REGIONS), load_cases(CORPUS))


def test_the_corpus_is_big_balanced_and_covers_every_family() -> None:
    rows = [json.loads(line) for line in CORPUS.read_text().splitlines()]
    assert len(rows) >= 1000
    private = sum(r["private"] for r in rows)
    assert private == len(rows) - private
    families = {r["kind"] for r in rows}
    assert families >= set(KINDS) - {"term", "pattern"}
    cases = " ".join(r["case"] for r in rows)
    for where in ("(earlier)", "(system)", "nbsp", "fullwidth", "zero-width", "en-dash"):
        assert where in cases


@pytest.mark.parametrize("kind", [k for k in KINDS if k not in ("term", "pattern")])
def test_recall_and_precision_per_family(report, kind: str) -> None:  # type: ignore[no-untyped-def]
    score = report.kinds[kind]
    misses = [c.note for c in report.misses if c.kind == kind]
    alarms = [c.note for c, _ in report.false_alarms if c.kind == kind]
    assert score.recall is not None and score.recall >= MIN_RECALL, misses
    assert score.precision is not None and score.precision >= MIN_PRECISION, alarms


def test_the_corpus_file_is_what_the_generator_writes(tmp_path: Path) -> None:
    import scripts.privacycorpus as gen

    gen.R.seed(gen.SEED)
    rows = gen.build()
    assert [json.dumps(r, ensure_ascii=False) for r in rows] == CORPUS.read_text().splitlines()
