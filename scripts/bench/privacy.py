"""The privacy scanner on this machine: what it catches on the labelled corpus, and how long
a scan takes.

    python -m scripts.bench.privacy            # about a minute; the last line is one JSON object
    python -m scripts.bench.privacy --quick    # fewer timing rounds

- recall / precision per kind on tests/data/privacy_corpus.jsonl (scripts/privacycorpus.py),
  counted as `tandem privacy test` counts (router.privacy_eval);
- scan_p50_ms / scan_p99_ms: one corpus conversation, never seen before (the cache cleared;
  phonenumbers' per-region metadata loaded by an untimed first round);
- cold_4k_p50_ms / cold_4k_p99_ms: a 4,000-token conversation (the router bench's), every
  message new; warm_4k_p99_ms: the same conversation with only its last message new (a chat's
  next turn: the earlier messages come from the cache);
- detect_secrets_ms_per_message and its recall/false alarms on the corpus's secret families:
  why the per-request scan does not call detect-secrets (if installed: the `dev` extra).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from router.privacy import PrivacyScanner  # noqa: E402
from router.privacy_eval import evaluate, load_cases  # noqa: E402
from router.protocol import Message  # noqa: E402

CORPUS = REPO_ROOT / "tests" / "data" / "privacy_corpus.jsonl"
REGIONS = ("US", "GB", "DE", "FR")
SECRET_KINDS = ("api_token", "private_key", "password", "credential_url")


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def corpus_scores() -> dict[str, Any]:
    report = evaluate(PrivacyScanner(regions=REGIONS), load_cases(CORPUS))
    return report.as_dict()


def corpus_times(rounds: int) -> dict[str, float]:
    cases = load_cases(CORPUS)
    # phonenumbers reads a region's metadata the first time a number of it is parsed (a few
    # ms, once per process): one round untimed, as a chat's first minutes would have it.
    evaluate(PrivacyScanner(regions=REGIONS), cases)
    times: list[float] = []
    for r in range(rounds):
        for case in cases:
            scanner = PrivacyScanner(regions=REGIONS)  # an empty cache: a first look
            messages = [Message(m.role, m.content + f" {r}") for m in case.messages]
            started = time.perf_counter()
            scanner.scan(messages)
            times.append((time.perf_counter() - started) * 1000)
    return {
        "scan_p50_ms": round(_percentile(times, 0.5), 4),
        "scan_p99_ms": round(_percentile(times, 0.99), 4),
    }


def conversation_times(iterations: int) -> dict[str, float]:
    from scripts.bench.router import _conversation

    rng = random.Random(0)
    conversations = [_conversation(rng) for _ in range(20)]
    scanner = PrivacyScanner(("Project Falcon", "Ann"), (r"ACME-\d{4}",), REGIONS)
    cold: list[float] = []
    warm: list[float] = []
    for i in range(iterations):
        base = conversations[i % 20]
        fresh = [Message(m.role, m.content + f" {i}") for m in base]
        started = time.thread_time()
        scanner.scan(fresh)
        cold.append((time.thread_time() - started) * 1000)
        # The next turn of the same chat: everything but the last message is as it was.
        nxt = [*fresh[:-1], Message("user", f"and one more question, number {i}?")]
        started = time.thread_time()
        scanner.scan(nxt)
        warm.append((time.thread_time() - started) * 1000)
    return {
        "cold_4k_p50_ms": round(_percentile(cold, 0.5), 4),
        "cold_4k_p99_ms": round(_percentile(cold, 0.99), 4),
        "warm_4k_p99_ms": round(_percentile(warm, 0.99), 4),
    }


def detect_secrets_comparison() -> dict[str, Any]:
    try:
        from detect_secrets.core.scan import scan_line
        from detect_secrets.settings import default_settings
    except ImportError:
        return {"detect_secrets": "not installed"}
    cases = [c for c in load_cases(CORPUS) if c.kind in SECRET_KINDS]
    caught = alarms = private = 0
    times: list[float] = []
    with default_settings():
        for case in cases:
            found = False
            for m in case.messages:
                started = time.perf_counter()
                for line in m.content.splitlines() or [""]:
                    if list(scan_line(line)):
                        found = True
                times.append((time.perf_counter() - started) * 1000)
            private += case.private
            caught += found and case.private
            alarms += found and not case.private
    return {
        "detect_secrets_ms_per_message": round(statistics.median(times), 3),
        "detect_secrets_recall": round(caught / private, 4) if private else None,
        "detect_secrets_false_alarm_rate": round(alarms / (len(cases) - private), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench.privacy")
    parser.add_argument("--quick", action="store_true", help="fewer timing rounds")
    args = parser.parse_args(argv)
    kinds = corpus_scores()
    for kind, s in kinds.items():
        print(f"{kind:16} recall {s['recall']}  precision {s['precision']}", file=sys.stderr)
    result: dict[str, Any] = {
        "recall": {k: s["recall"] for k, s in kinds.items()},
        "precision": {k: s["precision"] for k, s in kinds.items()},
        "corpus_rows": kinds["all"]["private"] + kinds["all"]["lookalikes"],  # type: ignore[operator]
    }
    result.update(corpus_times(1 if args.quick else 3))
    result.update(conversation_times(100 if args.quick else 500))
    result.update(detect_secrets_comparison())
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
