"""`tandem router`: calibrate the complexity threshold on your own prompts; explain a decision."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tui.config import MODES, ConfigError, load_config, update_config
from tui.paths import paths

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem router",
        description="Tune and inspect the router that picks this device or the cloud.",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    cal = sub.add_parser(
        "calibrate",
        help="set complexity_threshold from your own prompts",
        description=(
            "Score your own prompts with the router's complexity scorer and set "
            "complexity_threshold in the config so that the given share of them would go to "
            "the cloud. FILE holds one prompt per line, or JSON Lines: a string, "
            '{"prompt": ...}, or {"messages": [...]} (every user turn counts).'
        ),
    )
    cal.add_argument("--prompts", type=Path, required=True, metavar="FILE", help="your prompts")
    cal.add_argument(
        "--cloud-share",
        type=float,
        default=0.2,
        metavar="SHARE",
        help="share of prompts to send to the cloud, 0 to 1 (default 0.2)",
    )
    cal.add_argument("--dry-run", action="store_true", help="print the threshold without saving it")
    exp = sub.add_parser(
        "explain",
        help="show where a message would run and why",
        description=(
            "Show the router's decision for a message under your config: the side, the rule "
            "that decided, the reason and the scores, and each privacy finding's kind and "
            "message (with privacy_action redact: what the cloud would get as placeholders). "
            "Runs no model and connects nowhere; "
            "load-dependent rules (context window, overflow, circuit breakers) are not "
            "evaluated here."
        ),
    )
    exp.add_argument("text", help="the message (a /local or /cloud prefix works as in the chat)")
    exp.add_argument("--mode", choices=MODES, default=None, help="routing mode to assume")
    exp.add_argument("--pin", choices=("local", "cloud"), default=None, help="a conversation pin")
    exp.add_argument("--json", action="store_true", help="print the decision as JSON")
    return parser


def _calibrate(args: argparse.Namespace) -> int:
    from router.calibrate import CalibrationError, calibrate, load_prompts

    if not 0.0 <= args.cloud_share <= 1.0:
        print("tandem router calibrate: --cloud-share must be between 0 and 1", file=sys.stderr)
        return 2
    try:
        load_config()  # a broken config file is reported before the work, not after
        result = calibrate(load_prompts(args.prompts), args.cloud_share)
    except (CalibrationError, ConfigError) as exc:
        print(f"tandem router calibrate: {exc}", file=sys.stderr)
        return 1
    print(
        f"complexity_threshold = {result.threshold:.4f}: {result.achieved_share:.1%} of your "
        f"{result.prompts:,} prompts would go to the cloud (asked for {result.target_share:.1%})."
    )
    if args.dry_run:
        return 0
    try:
        # Only the threshold: the loaded config also holds TANDEM_* values from this shell.
        update_config({"complexity_threshold": result.threshold})
    except (OSError, ConfigError) as exc:
        print(f"tandem router calibrate: cannot write the config: {exc}", file=sys.stderr)
        return 1
    print(f"Saved to {paths().config_file}.")
    return 0


def _explain(args: argparse.Namespace) -> int:
    from router.policy import RouterSettings, RoutingInput, RoutingPolicy, parse_override
    from router.protocol import Message

    try:
        config = load_config()
        settings = RouterSettings(
            mode=args.mode or config.mode,
            complexity_threshold=config.complexity_threshold,
            privacy_terms=tuple(config.privacy_terms),
            privacy_patterns=tuple(config.privacy_patterns),
            privacy_regions=tuple(config.privacy_region),
            privacy_action=config.privacy_action,
        )
        policy = RoutingPolicy(settings)
    except (ConfigError, ValueError) as exc:
        print(f"tandem router explain: {exc}", file=sys.stderr)
        return 1
    override, text = parse_override(args.text)
    decision = policy.decide(
        RoutingInput(
            messages=(Message("user", text),),
            max_tokens=config.max_tokens,
            override=override,
            pin=args.pin,
            cloud_missing=None if config.cloud_url else "no cloud configured",
        )
    )
    from router.protocol import ChatRequest
    from router.redaction import redact

    redaction = redact(ChatRequest((Message("user", text),)), policy.scanner)
    scores = dict(decision.scores)
    if "complexity" not in scores:  # an earlier rule decided: show the score all the same
        scores["complexity"] = round(policy.scorer.score((Message("user", text),)), 4)
        scores["threshold"] = settings.complexity_threshold
    if args.json:
        data = {
            "side": decision.side,
            "rule": decision.rule,
            "reason": decision.reason,
            "scores": scores,
            "findings": [
                {"kind": f.kind, "label": f.label, "message": f.message}
                for f in decision.findings
            ],
            "redact": decision.redact,
        }
        if decision.redact:
            data["redacted"] = redaction.summary()
        print(json.dumps(data, ensure_ascii=False))
        return 0
    where = "this device" if decision.side == "local" else "the cloud"
    print(f"{where}  [{decision.rule}]  {decision.reason}")
    print("  " + "  ".join(f"{k}={v:g}" for k, v in scores.items()))
    for f in decision.findings:
        print(f"  private: {f.kind} ({f.label}) in message {f.message}")
    if decision.redact:
        print(f"  in the cloud: {redaction.summary()} (placeholders; values restored here)")
    return 0


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return _calibrate(args) if args.action == "calibrate" else _explain(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
