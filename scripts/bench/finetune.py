"""Benchmark: `tandem finetune train` against `python -m mlx_lm lora`, side by side in one run.

    python -m scripts.bench.finetune            # a few minutes; the last line is one JSON object
    python -m scripts.bench.finetune --iters 40 # shorter

Same test model (the target: hidden 128, 3 layers), same generated chat data (lengths spread
from ~20 to ~1,000 tokens, in random order, as real data comes), LoRA rank 8 on all layers,
batch size, iterations, learning rate, max length, prompt masking, seed, and validation over
the whole validation split at the start and the end.

- tokens_per_s_ratio: tandem ÷ mlx_lm. Both sides' figure is mlx-lm's own trainer report:
  trained (loss-bearing) tokens ÷ time in the training steps, summed over all reports.
  Target ≥ 1.25. `wall_tokens_per_s_ratio` is the same with each process's whole wall time
  (model load, tokenization, validation included).
- padding_share: padded slots ÷ all slots of the training batches. tandem: measured over the
  batches it trained on. mlx_lm: its batches over one epoch (consecutive rows in file order,
  since its length sort keys on the number of JSON keys; widths rounded as it rounds them).
  Target for tandem < 10%.
- val_loss_delta: final validation loss, tandem − mlx_lm, each the mean over `--seeds` runs
  (seeds 0, 1, ...: LoRA init and batch order). Both start from the same loss
  (`initial_val_loss_delta`, a check that they evaluate alike) and see the same rows, in
  different batches. "Within noise" is judged against the seeds themselves:
  `val_loss_noise` is the standard error of the difference of the two means, and
  `val_loss_within_noise` says whether |delta| ≤ 2 × that.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from scripts.finetunedata import spread_rows, write_jsonl  # noqa: E402
from scripts.testmodels import build  # noqa: E402

# Runs `python -m mlx_lm lora`'s own main() with a reporting callback that prints each report
# as JSON: its run() replaces any callback it is handed with get_reporting_callbacks().
MLX_RUNNER = """
import json, sys
import mlx_lm.lora as lora

class Capture:
    def on_train_loss_report(self, info):
        print("BENCH " + json.dumps({"kind": "train", **info}), flush=True)
    def on_val_loss_report(self, info):
        print("BENCH " + json.dumps({"kind": "val", **info}), flush=True)

lora.get_reporting_callbacks = lambda *a, **k: Capture()
sys.argv = ["mlx_lm.lora", *sys.argv[1:]]
lora.main()
"""


def _env() -> dict[str, str]:
    env = dict(os.environ)
    lib = "/usr/lib/x86_64-linux-gnu/libopenblas.so.0"
    if sys.platform == "linux" and Path(lib).exists() and lib not in env.get("LD_PRELOAD", ""):
        env["LD_PRELOAD"] = lib
        env.setdefault("OPENBLAS_NUM_THREADS", str(os.cpu_count() or 1))
    return env


def _throughput(reports: list[dict[str, Any]]) -> float:
    """Trained tokens ÷ training-step time, from mlx-lm's train reports."""
    tokens = seconds = 0.0
    previous = 0
    for r in reports:
        window = r["trained_tokens"] - previous
        previous = r["trained_tokens"]
        tokens += window
        seconds += window / r["tokens_per_second"] if r["tokens_per_second"] > 0 else 0.0
    return tokens / seconds if seconds else 0.0


def run_mlx(
    model: Path, data: Path, out: Path, a: argparse.Namespace, seed: int = 0
) -> dict[str, Any]:
    cmd = [
        sys.executable, "-c", MLX_RUNNER, "--train", "--model", str(model), "--data", str(data),
        "--adapter-path", str(out), "--fine-tune-type", "lora", "--num-layers", "-1",
        "--batch-size", str(a.batch_size), "--iters", str(a.iters),
        "--learning-rate", str(a.learning_rate), "--max-seq-length", str(a.max_seq_len),
        "--mask-prompt", "--steps-per-report", "10", "--steps-per-eval", str(a.iters),
        "--val-batches", "-1", "--save-every", str(a.iters + 1), "--seed", str(seed),
    ]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"mlx_lm lora failed:\n{done.stderr[-3000:]}")
    reports = [json.loads(line[6:]) for line in done.stdout.splitlines()
               if line.startswith("BENCH ")]
    train = [r for r in reports if r["kind"] == "train"]
    val = [r for r in reports if r["kind"] == "val"]
    return {
        "tokens_per_s": _throughput(train),
        "trained_tokens": train[-1]["trained_tokens"],
        "wall_s": wall,
        "initial_val_loss": val[0]["val_loss"],
        "val_loss": val[-1]["val_loss"],
    }


def run_tandem(
    model: Path, data: Path, home: Path, a: argparse.Namespace, seed: int = 0
) -> dict[str, Any]:
    cmd = [
        sys.executable, "-m", "tui.cli", "finetune", "train", "--model", str(model),
        "--data", str(data), "--name", "bench", "--type", "lora", "--layers", "-1",
        "--batch-size", str(a.batch_size), "--iters", str(a.iters),
        "--learning-rate", str(a.learning_rate), "--max-seq-len", str(a.max_seq_len),
        "--steps-per-report", "10", "--steps-per-eval", str(a.iters), "--val-batches", "-1",
        "--seed", str(seed),
    ]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env={**_env(), "TANDEM_HOME":
                                                                    str(home)}, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"tandem finetune failed:\n{done.stderr[-3000:]}")
    record = json.loads((home / "data" / "adapters" / "bench" / "tandem.json").read_text())
    m = record["metrics"]
    return {
        "tokens_per_s": m["tokens_per_s"],
        "trained_tokens": m["trained_tokens"],
        "wall_s": wall,
        "initial_val_loss": m["initial_val_loss"],
        "val_loss": m["val_loss"],
        "padding_share": m["padding_share"],
    }


def mlx_padding_share(lengths: list[int], batch_size: int, max_seq_len: int) -> float:
    """mlx-lm 0.32.2's batches over one epoch: consecutive rows in file order (its length sort
    keys on the number of JSON keys, the same for every chat row), width 1 + the next
    multiple of 32, capped at the max length."""
    real = slots = 0
    for i in range(0, len(lengths) - batch_size + 1, batch_size):
        batch = [min(n, max_seq_len) for n in lengths[i : i + batch_size]]
        width = min(1 + 32 * math.ceil(max(batch) / 32), max_seq_len)
        real += sum(min(n, width) for n in batch)
        slots += width * len(batch)
    return 1 - real / slots


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--train-rows", type=int, default=480)
    parser.add_argument("--valid-rows", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--max-seq-len", type=int, default=1024)
    parser.add_argument("--seeds", type=int, default=3,
                        help="runs per side (seeds 0..N-1) for the val loss comparison")
    a = parser.parse_args()

    models = build()
    with tempfile.TemporaryDirectory(prefix="tandem-bench-ft-") as tmp:
        root = Path(tmp)
        data = root / "data"
        write_jsonl(data / "train.jsonl", spread_rows(a.train_rows, seed=1, max_sentences=38))
        write_jsonl(data / "valid.jsonl", spread_rows(a.valid_rows, seed=2, max_sentences=38))

        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(models.target))
        lengths = [
            len(tok.apply_chat_template(json.loads(line)["messages"], return_dict=False))
            for line in (data / "train.jsonl").read_text().splitlines()
        ]
        print(f"data: {len(lengths)} train rows, tokens min {min(lengths)} median "
              f"{sorted(lengths)[len(lengths) // 2]} max {max(lengths)}", file=sys.stderr)

        mlx_runs, our_runs = [], []
        for seed in range(a.seeds):  # interleaved: load drift on a shared machine hits both
            mlx_runs.append(run_mlx(models.target, data, root / f"mlx-{seed}", a, seed=seed))
            print(f"mlx_lm seed {seed}: {json.dumps(mlx_runs[-1])}", file=sys.stderr)
            our_runs.append(run_tandem(models.target, data, root / f"home-{seed}", a, seed=seed))
            print(f"tandem seed {seed}: {json.dumps(our_runs[-1])}", file=sys.stderr)

    mlx_share = mlx_padding_share(lengths, a.batch_size, a.max_seq_len)
    mlx, ours = mlx_runs[0], our_runs[0]
    mlx_val = [r["val_loss"] for r in mlx_runs]
    our_val = [r["val_loss"] for r in our_runs]
    delta = statistics.fmean(our_val) - statistics.fmean(mlx_val)
    noise = (
        math.sqrt(statistics.variance(our_val) / a.seeds + statistics.variance(mlx_val) / a.seeds)
        if a.seeds > 1
        else None
    )
    speed = [o["tokens_per_s"] / m["tokens_per_s"] for o, m in zip(our_runs, mlx_runs, strict=True)]
    wall = [
        (o["trained_tokens"] / o["wall_s"]) / (m["trained_tokens"] / m["wall_s"])
        for o, m in zip(our_runs, mlx_runs, strict=True)
    ]
    result = {
        "tokens_per_s_ratio": round(statistics.median(speed), 3),
        "wall_tokens_per_s_ratio": round(statistics.median(wall), 3),
        "padding_share": {"tandem": round(ours["padding_share"], 4), "mlx_lm": round(mlx_share, 4)},
        "val_loss_delta": round(delta, 4),
        "val_loss_noise": round(noise, 4) if noise is not None else None,
        "val_loss_within_noise": abs(delta) <= 2 * noise if noise is not None else None,
        "initial_val_loss_delta": round(ours["initial_val_loss"] - mlx["initial_val_loss"], 5),
        "val_loss": {"tandem": [round(v, 4) for v in our_val],
                     "mlx_lm": [round(v, 4) for v in mlx_val]},
        "tokens_per_s": {"tandem": round(ours["tokens_per_s"], 1),
                         "mlx_lm": round(mlx["tokens_per_s"], 1)},
        "wall_s": {"tandem": round(ours["wall_s"], 1), "mlx_lm": round(mlx["wall_s"], 1)},
        "settings": {"iters": a.iters, "batch_size": a.batch_size, "rank": 8, "layers": "all",
                     "train_rows": a.train_rows, "max_seq_len": a.max_seq_len, "seeds": a.seeds,
                     "tokens_min": min(lengths), "tokens_max": max(lengths)},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
