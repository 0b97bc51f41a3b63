"""`tandem finetune`: train a LoRA adapter on this machine, and evaluate one.

    tandem finetune train --model M --data DIR|FILE.jsonl [--name NAME] [options]
    tandem finetune eval NAME [--model M] [--data ...] [--samples N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO

from local.finetune.errors import DataError, FinetuneError

__all__ = ["main"]

DESCRIPTION = """\
Fine-tune the local model on your own chat data. Rows are validated before anything loads
(each problem reported as file:line: reason), tokenized once and cached, and batched by real
length so that little compute goes to padding. Adapters are kept in tandem's data folder:
see `tandem adapters`."""

TRAIN_EPILOG = """\
data formats (JSONL, one object per line, one format per file):
  chat         {"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}
  completions  {"prompt": "...", "completion": "..."}
  text         {"text": "..."}
A folder holds train.jsonl and optionally valid.jsonl; a single file is split 90/10 by a
hash of each row (the same rows always land in the same split).

Ctrl-C stops after the current step and saves a checkpoint; run the same command with
--resume to continue (the interrupted run's settings are kept). A quantized base model
trains as QLoRA.

examples:
  tandem finetune train --model ./my-model --data chats.jsonl --name support --iters 600
  tandem finetune train --model ./my-model --data data/ --epochs 2 --rank 16 --layers 8
  tandem finetune eval support"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem finetune",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    t = sub.add_parser(
        "train",
        help="train an adapter",
        description=DESCRIPTION,
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--model", required=True, help="base model folder or Hugging Face hub id")
    t.add_argument("--data", required=True, type=Path, help="folder or .jsonl file of rows")
    t.add_argument("--name", help="adapter name (default: from the data file's name)")
    t.add_argument("--type", dest="kind", choices=("lora", "dora", "full"), default="lora",
                   help="lora (default), dora, or full fine-tuning of the last --layers blocks")
    t.add_argument("--rank", type=int, default=8, help="LoRA rank (default: 8)")
    t.add_argument("--scale", type=float, default=20.0,
                   help="LoRA scale, as mlx-lm defines it (default: 20)")
    t.add_argument("--layers", type=int, default=16,
                   help="adapt the last N transformer blocks; -1: all (default: 16)")
    group = t.add_mutually_exclusive_group()
    group.add_argument("--iters", type=int, help="training steps")
    group.add_argument("--epochs", type=float, help="passes over the data (default: 1)")
    t.add_argument(
        "--batch-size",
        type=int,
        default=4,
        help="rows per step on average: steps of short rows hold more, of long rows fewer, "
        "so that each holds about as many tokens (default: 4)",
    )
    t.add_argument("--max-seq-len", type=int, default=2048,
                   help="longer rows are truncated, and counted (default: 2048)")
    t.add_argument("--learning-rate", type=float, default=1e-5, help="Adam's step (default: 1e-5)")
    t.add_argument("--grad-checkpoint", action="store_true",
                   help="recompute activations in the backward pass: less memory, slower")
    t.add_argument("--no-mask-prompt", dest="mask_prompt", action="store_false",
                   help="also learn the prompt tokens of chat and completion rows")
    t.add_argument("--skip-invalid", action="store_true",
                   help="leave invalid lines out instead of stopping")
    t.add_argument("--resume", action="store_true",
                   help="continue the interrupted adapter --name from its checkpoint")
    t.add_argument("--steps-per-report", type=int, default=10,
                   help="steps between progress lines (default: 10)")
    t.add_argument("--steps-per-eval", type=int, default=100,
                   help="steps between validation losses (default: 100)")
    t.add_argument("--val-batches", type=int, default=25,
                   help="batches per validation; -1: the whole split (default: 25)")
    t.add_argument("--seed", type=int, default=0, help="seed for batch order and init (default: 0)")

    e = sub.add_parser(
        "eval",
        help="held-out loss with and without an adapter, and sample answers side by side",
        description="Compare an adapter with its base model on the held-out split: loss, "
        "perplexity, and a few greedy answers side by side.",
    )
    e.add_argument("name", help="adapter name (see `tandem adapters list`)")
    e.add_argument("--model", help="base model (default: the one it was trained on)")
    e.add_argument("--data", type=Path, help="data to evaluate on (default: its training "
                   "data's validation split)")
    e.add_argument("--samples", type=int, default=3, help="sample answers to show (default: 3)")
    e.add_argument("--max-tokens", type=int, default=48, help="tokens per sample (default: 48)")
    e.add_argument("--batch-size", type=int, default=4, help="rows per batch (default: 4)")
    return parser


def _default_name(data: Path) -> str:
    import re

    stem = data.stem if data.suffix else data.name
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")
    return (name or "adapter")[:48]


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
    return f"{s // 60}:{s % 60:02d}"


class _ProgressView:
    """One line per report; on a terminal it starts with a bar."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()

    def __call__(self, p: object) -> None:
        from local.finetune.train import Progress

        assert isinstance(p, Progress)
        if p.val_loss is not None:
            line = f"step {p.step:>5}/{p.total}  val_loss {p.val_loss:.3f}"
        else:
            bar = ""
            if self.tty:
                done = int(20 * p.step / max(p.total, 1))
                bar = "▕" + "█" * done + "░" * (20 - done) + "▏ "
            line = (
                f"{bar}step {p.step:>5}/{p.total}  loss {p.train_loss:.3f}  "
                f"{p.tokens_per_s or 0:,.0f} tok/s  ETA {_clock(p.eta_s)}  "
                f"peak {p.peak_memory_gb or 0:.2f} GB"
            )
        print(line, file=self.out, flush=True)


def _say(text: str) -> None:
    print(f"[tandem] {text}", file=sys.stderr, flush=True)


def _train(args: argparse.Namespace) -> int:
    from local.finetune.registry import AdapterRegistry
    from local.finetune.train import TrainConfig, run_training
    from tui.paths import paths

    p = paths()
    config = TrainConfig(
        model=args.model,
        data=args.data,
        name=args.name or _default_name(args.data),
        kind=args.kind,
        rank=args.rank,
        scale=args.scale,
        layers=args.layers,
        iters=args.iters,
        epochs=args.epochs,
        batch_size=args.batch_size,
        max_seq_len=args.max_seq_len,
        learning_rate=args.learning_rate,
        grad_checkpoint=args.grad_checkpoint,
        mask_prompt=args.mask_prompt,
        skip_invalid=args.skip_invalid,
        resume=args.resume,
        seed=args.seed,
        steps_per_report=args.steps_per_report,
        steps_per_eval=args.steps_per_eval,
        val_batches=args.val_batches,
    )
    registry = AdapterRegistry(p.adapters_dir)
    result = run_training(
        config,
        registry=registry,
        cache_dir=p.cache_dir / "finetune",
        on_progress=_ProgressView(sys.stdout),
        say=_say,
    )
    for issue in result.skipped:
        print(f"skipped {issue}", file=sys.stderr)
    for issue in result.warnings:
        print(f"warning {issue}", file=sys.stderr)
    if result.warnings:
        _say(f"{sum('truncated' in w.reason for w in result.warnings)} row(s) truncated to "
             f"--max-seq-len {config.max_seq_len}")
    record = result.record
    if result.interrupted:
        _say(
            f"interrupted at step {record.step}/{record.iters}: checkpoint saved in "
            f"{result.folder}; run the same command with --resume to continue"
        )
        return 130
    m = record.metrics
    val = m.get("val_loss")
    _say(
        f"adapter {record.name!r} trained: {record.step} steps, "
        + (f"val_loss {m.get('initial_val_loss') or 0:.3f} → {val:.3f}, " if val else "")
        + f"{m.get('tokens_per_s') or 0:,.0f} tok/s, padding {m.get('padding_share', 0):.1%}; "
        f"saved in {result.folder}"
    )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from local.finetune.evaluate import evaluate_adapter
    from local.finetune.registry import AdapterRegistry
    from tui.paths import paths

    p = paths()
    report = evaluate_adapter(
        AdapterRegistry(p.adapters_dir),
        args.name,
        model=args.model,
        data=args.data,
        cache_dir=p.cache_dir / "finetune",
        samples=args.samples,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
    )
    print(report.render())
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    try:
        return _train(args) if args.command == "train" else _eval(args)
    except DataError as exc:
        for issue in exc.issues:
            print(issue, file=sys.stderr)
        print(f"tandem finetune: {exc}", file=sys.stderr)
        return 1
    except FinetuneError as exc:
        print(f"tandem finetune: {exc}", file=sys.stderr)
        return 1
