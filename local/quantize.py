"""Quantize a model with mlx-lm's converter, then check what it cost in quality.

Quality must be verified after every lossy optimization: the converted model's perplexity on
held-out text is compared with the source's. Above `warn_at` (default 5 %) the result is kept
with a warning; above `refuse_at` (default 25 %) it is deleted unless forced.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.protocol import TandemError

__all__ = [
    "DEFAULT_HELDOUT",
    "RECIPES",
    "QualityLossTooHigh",
    "QuantizeError",
    "QuantizeResult",
    "perplexity",
    "quantize",
]

RECIPES = ("mixed_2_6", "mixed_3_4", "mixed_3_6", "mixed_4_6")
BITS = (2, 3, 4, 5, 6, 8)
GROUP_SIZES = (32, 64, 128)

# Plain English prose for models that come without held-out text of their own.
DEFAULT_HELDOUT = (
    "The village lies at the foot of a long hill, where the road from the coast meets the old "
    "river path. In the morning the baker opens his shop before the sun is up, and the smell of "
    "bread drifts across the square. Children walk to school in small groups, talking about the "
    "games they will play, while their parents stop to buy fruit at the market. By noon the "
    "square is quiet again. In the evening people sit outside their houses and watch the light "
    "fade over the fields, and somebody always plays music until it is too dark to see."
)


class QuantizeError(TandemError):
    """The conversion cannot run (bad options, unreadable source, existing output)."""


@dataclass(frozen=True, slots=True)
class QuantizeResult:
    output: Path
    bits: int
    group_size: int
    recipe: str | None
    perplexity_before: float
    perplexity_after: float
    size_before: int
    size_after: int

    @property
    def relative_change(self) -> float:
        """(after − before) / before: 0.03 means 3 % worse."""
        return self.perplexity_after / self.perplexity_before - 1.0


class QualityLossTooHigh(QuantizeError):
    """The quantized model lost more quality than allowed; it was not kept."""

    def __init__(self, result: QuantizeResult, limit: float) -> None:
        super().__init__(
            f"perplexity rose by {result.relative_change:.1%}, above the {limit:.0%} limit; "
            "the quantized model was not kept (use more bits, --mixed, or --force)"
        )
        self.result = result
        self.limit = limit


def perplexity(model: Any, tokenizer: Any, text: str, window: int = 1024) -> float:
    """exp(mean next-token cross-entropy) of `text`, in windows of `window` tokens."""
    import mlx.core as mx
    import mlx.nn as nn

    ids = list(tokenizer.encode(text))
    if len(ids) < 2:
        raise QuantizeError("the held-out text is too short to measure perplexity")
    total, count = 0.0, 0
    for start in range(0, len(ids) - 1, window):
        chunk = ids[start : start + window + 1]
        if len(chunk) < 2:
            break
        x = mx.array(chunk[:-1])[None]
        y = mx.array(chunk[1:])[None]
        logits = model(x).astype(mx.float32)
        loss = nn.losses.cross_entropy(logits, y, reduction="sum")
        total += float(loss.astype(mx.float32).item())  # type: ignore[arg-type]
        count += len(chunk) - 1
    return math.exp(total / count)


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.glob("*.safetensors"))


def _check_group_size(src: Path, group_size: int) -> None:
    if group_size not in GROUP_SIZES:
        raise QuantizeError(f"group size must be one of {', '.join(map(str, GROUP_SIZES))}")
    try:
        config = json.loads((src / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise QuantizeError(f"cannot read {src / 'config.json'}: {exc}") from exc
    text = {**config, **(config.get("text_config") or {})}
    for key in ("hidden_size", "intermediate_size"):
        width = text.get(key)
        if isinstance(width, int) and width % group_size:
            raise QuantizeError(
                f"group size {group_size} does not divide the model's {key} ({width}); "
                "try --group-size 32 or 64"
            )


def _load(folder: Path) -> tuple[Any, Any]:
    from mlx_lm.utils import load

    loaded = load(str(folder))
    return loaded[0], loaded[1]


def quantize(
    src: Path,
    dst: Path,
    *,
    bits: int = 4,
    group_size: int = 64,
    recipe: str | None = None,
    heldout: str = DEFAULT_HELDOUT,
    refuse_at: float = 0.25,
    force: bool = False,
) -> QuantizeResult:
    """Convert `src` into `dst` (bits / group size / mixed recipe) and measure the perplexity
    change on `heldout`. Raises QualityLossTooHigh (and keeps nothing) past `refuse_at`."""
    if bits not in BITS:
        raise QuantizeError(f"bits must be one of {', '.join(map(str, BITS))}")
    if recipe is not None and recipe not in RECIPES:
        raise QuantizeError(f"--mixed must be one of {', '.join(RECIPES)}")
    if not (src / "config.json").exists():
        raise QuantizeError(f"{src} is not a model folder (no config.json)")
    if dst.exists():
        raise QuantizeError(f"{dst} already exists; remove it or pick another --out")
    _check_group_size(src, group_size)
    from mlx_lm.convert import convert

    model, tokenizer = _load(src)
    before = perplexity(model, tokenizer, heldout)
    del model
    scratch = dst.with_name(f".{dst.name}.partial")
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.parent.mkdir(parents=True, exist_ok=True)
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # mlx-lm prints [INFO] lines
            convert(
                str(src), str(scratch), quantize=True, q_bits=bits, q_group_size=group_size,
                quant_predicate=recipe,
            )
        model, tokenizer = _load(scratch)
        after = perplexity(model, tokenizer, heldout)
    except QuantizeError:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    except Exception as exc:
        shutil.rmtree(scratch, ignore_errors=True)
        raise QuantizeError(f"mlx-lm could not quantize {src.name}: {exc}") from exc
    result = QuantizeResult(dst, bits, group_size, recipe, before, after, _size(src),
                            _size(scratch))
    if result.relative_change > refuse_at and not force:
        shutil.rmtree(scratch, ignore_errors=True)
        raise QualityLossTooHigh(result, refuse_at)
    scratch.rename(dst)
    return result
