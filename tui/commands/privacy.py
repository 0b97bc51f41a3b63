"""`tandem privacy test FILE.jsonl`: how well the privacy scanner does on your own labelled
conversations, per kind, with the rows it got wrong.

Each line of the file: {"messages": [{"role": "user", "content": "..."}], "private": true,
"kind": "phone"}. `kind` is optional (it groups the table). The scanner is the chat's own:
your privacy terms, patterns and region(s) from the config. Nothing is sent anywhere.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tui.config import ConfigError, load_config

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem privacy",
        description="Check what the privacy scanner keeps on this device, on your own data.",
    )
    sub = parser.add_subparsers(dest="action", required=True)
    test = sub.add_parser(
        "test",
        help="recall and precision per kind on a labelled JSONL file",
        description=(
            "Scan each row of FILE (JSON lines with \"messages\", \"private\": true|false and "
            "an optional \"kind\") with the chat's scanner (your privacy terms, patterns and "
            "region from the config) and print recall and precision per kind, then the "
            "private rows it missed and the harmless rows it flagged. Nothing leaves this "
            "machine. Exit status 0, or 1 when the file cannot be read."
        ),
    )
    test.add_argument("file", type=Path, metavar="FILE.jsonl")
    test.add_argument(
        "--region", action="append", default=None, metavar="CC",
        help="region for national phone numbers (repeatable; default: privacy_region)",
    )  # fmt: skip
    test.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    test.add_argument(
        "--show", type=int, default=20, metavar="N", help="misses and false alarms to list"
    )
    return parser


def _first_text(case: object) -> str:
    messages = getattr(case, "messages", ())
    text = " | ".join(m.content for m in messages).replace("\n", " ")
    return text if len(text) <= 100 else text[:97] + "..."


def _test(args: argparse.Namespace) -> int:
    from router.privacy import PrivacyConfigError, PrivacyScanner
    from router.privacy_eval import CaseError, evaluate, format_table, load_cases

    try:
        config = load_config()
        scanner = PrivacyScanner(
            config.privacy_terms, config.privacy_patterns, args.region or config.privacy_region
        )
        cases = load_cases(args.file)
    except (ConfigError, PrivacyConfigError, CaseError) as exc:
        print(f"tandem privacy test: {exc}", file=sys.stderr)
        return 1
    report = evaluate(scanner, cases)
    if args.json:
        print(
            json.dumps(
                {
                    "kinds": report.as_dict(),
                    "misses": [c.line for c in report.misses],
                    "false_alarms": [c.line for c, _ in report.false_alarms],
                }
            )
        )
        return 0
    print(f"{len(cases):,} rows from {args.file} (regions: {', '.join(scanner.regions)})")
    print("\n".join(format_table(report)))
    if report.misses:
        print(f"\nMissed ({len(report.misses)}: private, but would have gone to the cloud):")
        for c in report.misses[: args.show]:
            print(f"  line {c.line} [{c.kind or '-'}]: {_first_text(c)}")
    if report.false_alarms:
        print(f"\nFlagged though not private ({len(report.false_alarms)}):")
        for c, kinds in report.false_alarms[: args.show]:
            print(f"  line {c.line} [{c.kind or '-'}] found {', '.join(kinds)}: {_first_text(c)}")
    if not report.misses and not report.false_alarms:
        print("\nNo misses and no false alarms.")
    return 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return _test(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
