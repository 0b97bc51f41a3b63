"""The scanner on the labelled corpus in tests/data (scripts/privacycorpus.py writes it): every
family of the issue, half the rows look-alikes, private data in earlier turns and in system
prompts, a quarter written with Unicode spaces, dashes, wide forms, zero-width characters or
decomposed accents.

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
    variants = ("nbsp", "fullwidth", "zero-width", "en-dash", "decomposed")
    for where in ("(earlier)", "(system)", *variants):
        assert where in cases


# Every id and token family issue 13 names, as the corpus's "sub" spells it: a corpus drawn at
# random once held no Aadhaar, no JWT and no AWS ASIA key, and no test noticed.
SUBKINDS = {
    "national_id": {"ssn", "itin", "nino", "idnr", "nir", "dni", "nie", "cf", "bsn", "aadhaar",
                    "pan", "sin", "tfn", "cpf", "passport"},
    "api_token": {"aws_akia", "aws_asia", "aws_secret", "google", "stripe_sk", "stripe_rk",
                  "github_ghp", "github_gho", "github_ghs", "gitlab", "npm", "pypi", "hf",
                  "slack", "twilio", "sendgrid", "openai", "anthropic", "jwt", "azure",
                  "azure_sas", "azure_shared_key", "azure_client_secret"},
    "private_key": {"RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY",
                    "ENCRYPTED PRIVATE KEY", "PGP PRIVATE KEY BLOCK", "DSA PRIVATE KEY"},
}  # fmt: skip


@pytest.mark.parametrize("family", sorted(SUBKINDS))
def test_every_sub_kind_is_in_the_corpus_and_caught(family: str) -> None:
    rows = [json.loads(line) for line in CORPUS.read_text().splitlines()]
    private = [r for r in rows if r["kind"] == family and r["private"]]
    assert {r.get("sub") for r in private} == SUBKINDS[family]
    scanner = PrivacyScanner(regions=REGIONS)
    missed = sorted(
        {r["sub"] for r in private if not scanner.scan_texts([m["content"] for m in r["messages"]])}
    )
    assert missed == []


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
