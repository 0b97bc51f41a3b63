"""`tandem models`: pull, list, pick the default, quantize with a quality check.

    tandem models pull ORG/NAME
    tandem models list
    tandem models default [MODEL | --reset]
    tandem models quantize SRC --bits 4 [--group-size 64] [--mixed RECIPE] [--force]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["main"]

DESCRIPTION = """\
Manage the models the local engine runs. Pulled and quantized models live in tandem's data
folder (`tandem models list` shows where); any folder in the Hugging Face layout works too."""

DEFAULT_EPILOG = """\
default model by this machine's memory (used while the config names none; the chat pulls
it into the models folder on its first start, or uses a smaller one from this table that was
pulled already):
  under 12 GB   mlx-community/Qwen3-0.6B-4bit
  12-24 GB      mlx-community/Qwen3-4B-4bit
  24 GB+        mlx-community/Qwen3-8B-4bit"""

QUANTIZE_EPILOG = """\
After converting, the perplexity of the source and of the quantized model on held-out text
is printed with the relative change. Above --warn (default 5%) tandem warns; above
--max-loss (default 25%) the quantized model is deleted unless --force is given.

examples:
  tandem models quantize ./my-model --bits 4
  tandem models quantize ./my-model --bits 3 --mixed mixed_3_6 --group-size 32"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem models",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser("pull", help="download a model from the Hugging Face hub",
                       description="Download a model from the Hugging Face hub into tandem's "
                       "models folder, with a progress bar.")
    p.add_argument("hub_id", metavar="ORG/NAME", help="e.g. mlx-community/Qwen3-0.6B-4bit")
    p.add_argument("--revision", help="branch, tag or commit (default: main)")
    sub.add_parser("list", help="models on disk: size, quantization bits, context window",
                   description="List the models in tandem's models folder.")
    d = sub.add_parser("default", help="show or set the model the chat uses",
                       description="Show the model the chat uses, or set it in the config file.",
                       epilog=DEFAULT_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("model", nargs="?", help="a folder, a pulled name or a hub id to use")
    d.add_argument("--reset", action="store_true",
                   help="forget the configured model: use the default for this machine")
    q = sub.add_parser("quantize", help="quantize a model and check its perplexity",
                       description="Quantize a model with mlx-lm's converter and check the "
                       "quality loss on held-out text.",
                       epilog=QUANTIZE_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    q.add_argument("src", help="the model folder (or pulled name) to quantize")
    q.add_argument("--bits", type=int, default=4, choices=(2, 3, 4, 5, 6, 8),
                   help="bits per weight (default 4)")
    q.add_argument("--group-size", type=int, default=64, choices=(32, 64, 128),
                   help="weights sharing one scale (default 64; must divide the model's width)")
    q.add_argument("--mixed", metavar="RECIPE",
                   choices=("mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6"),
                   help="mixed precision: more bits for sensitive layers "
                   "(mixed_2_6, mixed_3_4, mixed_3_6, mixed_4_6)")
    q.add_argument("--out", type=Path, help="output folder (default: next to the other models)")
    q.add_argument("--heldout", type=Path,
                   help="plain-text file for the perplexity check (default: built-in prose)")
    q.add_argument("--warn", type=float, default=0.05, metavar="FRACTION",
                   help="warn when perplexity rises by more than this (default 0.05)")
    q.add_argument("--max-loss", type=float, default=0.25, metavar="FRACTION",
                   help="refuse when perplexity rises by more than this (default 0.25)")
    q.add_argument("--force", action="store_true", help="keep the model past --max-loss")
    return parser


def _error(message: str) -> int:
    print(f"tandem models: {message}", file=sys.stderr)
    return 1


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _pull(args: argparse.Namespace) -> int:
    from local.models import pull
    from router.protocol import BackendError
    from tui.paths import paths

    try:
        folder = pull(args.hub_id, paths().models_dir, revision=args.revision)
    except BackendError as exc:
        return _error(str(exc))
    print(f"{args.hub_id} is in {folder}")
    return 0


def _list(_: argparse.Namespace) -> int:
    from local.models import list_models
    from tui.paths import paths

    folder = paths().models_dir
    models = list_models(folder)
    if not models:
        print(f"no models in {folder}; `tandem models pull ORG/NAME` downloads one")
        return 0
    rows = [("NAME", "SIZE", "BITS", "CONTEXT", "TYPE")]
    for m in models:
        bits = str(m.bits) if m.bits else m.dtype
        ctx = str(m.context_window) if m.context_window else "?"
        rows.append((m.name, _gb(m.size_bytes), bits, ctx, m.model_type))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    print(f"\n(in {folder})")
    return 0


def _default(args: argparse.Namespace) -> int:
    from local.models import default_model, pulled_default, resolve, total_memory_bytes
    from tui.config import ConfigError, load_config, update_config
    from tui.paths import paths

    try:
        if args.reset or args.model:
            update_config({"model": "" if args.reset else args.model})
        config = load_config()
    except ConfigError as exc:
        return _error(str(exc))
    if config.model:
        print(f"{config.model} (set in {paths().config_file})")
        resolved = resolve(config.model, paths().models_dir)
        if resolved != config.model:
            print(f"  → {resolved}")
    else:
        # The chat's own choice (tui.compose.choose_model): a pulled default, else it pulls.
        memory = total_memory_bytes()
        found = pulled_default(paths().models_dir, memory)
        if found is not None:
            print(f"{found[0]} (default for {memory / 2**30:.0f} GB of memory)")
            print(f"  → {found[1]}")
        else:
            print(f"{default_model(memory)} (default for {memory / 2**30:.0f} GB of memory; "
                  "not pulled yet: the chat pulls it when it starts)")
    return 0


def _quantize(args: argparse.Namespace) -> int:
    from local.models import resolve
    from local.quantize import DEFAULT_HELDOUT, QualityLossTooHigh, QuantizeError, quantize
    from tui.paths import paths

    models_dir = paths().models_dir
    src = Path(resolve(args.src, models_dir))
    if not src.is_dir():
        return _error(f"no model folder {args.src}; see `tandem models list`")
    suffix = f"{args.mixed}" if args.mixed else f"{args.bits}bit"
    out = args.out or models_dir / f"{src.name}-{suffix}"
    heldout = DEFAULT_HELDOUT
    if args.heldout:
        try:
            heldout = args.heldout.read_text()
        except OSError as exc:
            return _error(f"cannot read {args.heldout}: {exc.strerror or exc}")
    print(f"quantizing {src.name} to {args.bits} bits (group size {args.group_size}"
          f"{', ' + args.mixed if args.mixed else ''}) ...", flush=True)
    try:
        result = quantize(src, out, bits=args.bits, group_size=args.group_size,
                          recipe=args.mixed, heldout=heldout, refuse_at=args.max_loss,
                          force=args.force)
    except QualityLossTooHigh as exc:
        r = exc.result
        print(f"perplexity before: {r.perplexity_before:.3f}")
        print(f"perplexity after:  {r.perplexity_after:.3f} ({r.relative_change:+.1%})")
        return _error(str(exc))
    except QuantizeError as exc:
        return _error(str(exc))
    print(f"perplexity before: {result.perplexity_before:.3f}")
    print(f"perplexity after:  {result.perplexity_after:.3f} ({result.relative_change:+.1%})")
    print(f"size: {_gb(result.size_before)} → {_gb(result.size_after)}")
    if result.relative_change > args.max_loss:
        print(f"warning: kept despite a {result.relative_change:.1%} rise (--force)",
              file=sys.stderr)
    elif result.relative_change > args.warn:
        print(f"warning: perplexity rose by {result.relative_change:.1%} (more than "
              f"{args.warn:.0%}); compare answers before relying on it, or try more bits",
              file=sys.stderr)
    print(f"saved to {result.output}")
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    handlers = {"pull": _pull, "list": _list, "default": _default, "quantize": _quantize}
    return handlers[args.command](args)
