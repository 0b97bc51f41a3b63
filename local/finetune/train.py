"""Train an adapter with mlx-lm's tuner: `linear_to_lora_layers`, `TrainingArgs`, `train()` and
`default_loss`, fed by this package's pre-tokenized, length-bucketed `Batcher`.

The optimizer and the training step are mlx-lm's own. What this module adds: validation of the
data before anything loads, the tokenized cache, the registry record, progress reports,
Ctrl-C as a clean stop (the trainer finishes its step and saves; `--resume` continues from
that step with the optimizer state and the same batch order), QLoRA when the base is
quantized.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

from local.finetune.data import DataSet, Issue, load_data
from local.finetune.errors import FinetuneError, ResumeError
from local.finetune.hooks import Progress, Reporter, quiet_mlx_ui, stop_on_sigint
from local.finetune.registry import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    OPTIMIZER_STATE,
    AdapterRecord,
    AdapterRegistry,
    validate_name,
    write_atomically,
)

__all__ = [
    "Progress",
    "TrainConfig",
    "TrainResult",
    "local_model_path",
    "run_training",
]

Kind = Literal["lora", "dora", "full"]
KINDS: tuple[str, ...] = ("lora", "dora", "full")
# What --resume takes from the interrupted run instead of the command line: the run must be
# the same one for the continuation to mean anything.
RESUMED_FIELDS = (
    "kind", "rank", "scale", "dropout", "layers", "iters", "batch_size", "max_seq_len",
    "learning_rate", "mask_prompt", "seed", "grad_checkpoint",
)


@dataclass(slots=True)
class TrainConfig:
    """One training run, as `tandem finetune train` takes it."""

    model: str
    """Base model folder or hub id."""
    data: Path
    """A folder with train.jsonl (and optional valid.jsonl) or one .jsonl file."""
    name: str
    kind: str = "lora"
    rank: int = 8
    scale: float = 20.0
    """mlx-lm's LoRA scale (the update is scale · x·A·B); PEFT's lora_alpha = scale · rank."""
    dropout: float = 0.0
    layers: int = 16
    """How many of the last transformer blocks get adapters; -1: all."""
    iters: int | None = None
    epochs: float | None = None
    """Used when iters is None: passes over the training split."""
    batch_size: int = 4
    max_seq_len: int = 2048
    learning_rate: float = 1e-5
    grad_checkpoint: bool = False
    mask_prompt: bool = True
    """Learn only the answer of chat and completion rows (the prompt is masked from the loss)."""
    skip_invalid: bool = False
    resume: bool = False
    seed: int = 0
    steps_per_report: int = 10
    steps_per_eval: int = 100
    val_batches: int = 25
    """Validation batches per evaluation; -1: the whole validation split."""

    def __post_init__(self) -> None:
        validate_name(self.name)
        if self.kind not in KINDS:
            raise FinetuneError(f"--type must be one of {', '.join(KINDS)}, not {self.kind!r}")
        for label, value in (
            ("--rank", self.rank), ("--batch-size", self.batch_size),
            ("--max-seq-len", self.max_seq_len), ("steps per report", self.steps_per_report),
            ("steps per eval", self.steps_per_eval),
        ):
            if value < 1:
                raise FinetuneError(f"{label} must be at least 1")
        if self.iters is not None and self.iters < 1:
            raise FinetuneError("--iters must be at least 1")
        if self.epochs is not None and self.epochs <= 0:
            raise FinetuneError("--epochs must be positive")
        if self.learning_rate <= 0:
            raise FinetuneError("--learning-rate must be positive")
        if self.layers == 0 or self.layers < -1:
            raise FinetuneError("--layers must be a positive number, or -1 for all")


@dataclass(slots=True)
class TrainResult:
    record: AdapterRecord
    folder: Path
    interrupted: bool
    warnings: list[Issue] = field(default_factory=list)
    skipped: list[Issue] = field(default_factory=list)


def local_model_path(model: str) -> Path:
    """The folder of a model given as a folder or a hub id (downloaded if needed)."""
    path = Path(model).expanduser()
    if path.exists():
        return path.resolve()
    from mlx_lm.utils import _download

    try:
        return Path(_download(model))
    except Exception as exc:  # the hub client raises many kinds; all mean "not available"
        raise FinetuneError(
            f"model {model!r} is neither a folder nor a hub model that could be fetched ({exc})"
        ) from exc


def _adapter_config(config: TrainConfig, iters: int) -> dict[str, Any]:
    # The keys `mlx_lm lora` writes and `mlx_lm.tuner.utils.load_adapters` reads.
    return {
        "fine_tune_type": config.kind,
        "num_layers": config.layers,
        "lora_parameters": {"rank": config.rank, "scale": config.scale, "dropout": config.dropout},
        "model": config.model,
        "data": str(config.data),
        "batch_size": config.batch_size,
        "iters": iters,
        "learning_rate": config.learning_rate,
        "max_seq_length": config.max_seq_len,
        "mask_prompt": config.mask_prompt,
        "grad_checkpoint": config.grad_checkpoint,
        "optimizer": "adam",
        "seed": config.seed,
    }


def _hyperparameters(config: TrainConfig, iters: int) -> dict[str, Any]:
    hp = {k: v for k, v in asdict(config).items() if k in RESUMED_FIELDS}
    hp["iters"] = iters
    return hp


def _is_quantized(model: Any) -> bool:
    import mlx.nn as nn

    return any(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules())


def _attach(model: Any, config: TrainConfig) -> None:
    from mlx_lm.tuner.utils import linear_to_lora_layers

    model.freeze()
    if config.kind == "full":
        for layer in model.layers[-max(config.layers, 0) :]:
            layer.unfreeze()
        return
    linear_to_lora_layers(
        model,
        config.layers,
        {"rank": config.rank, "scale": config.scale, "dropout": config.dropout},
        use_dora=config.kind == "dora",
    )


def _begin(
    config: TrainConfig, registry: AdapterRegistry
) -> tuple[TrainConfig, AdapterRecord | None]:
    """Check the name against the registry; on --resume, take the interrupted run's settings."""
    if not config.resume:
        if registry.exists(config.name) and registry.get(config.name).step == 0:
            registry.delete(config.name)  # stopped before its first step: nothing to keep
        elif registry.exists(config.name):
            raise FinetuneError(
                f"an adapter named {config.name!r} exists; pick another --name, pass --resume "
                f"to continue it, or `tandem adapters delete {config.name}`"
            )
        return config, None
    if not registry.exists(config.name):
        raise ResumeError(f"--resume: no adapter named {config.name!r} to continue")
    record = registry.get(config.name)
    if record.status == "complete":
        raise ResumeError(f"--resume: adapter {config.name!r} finished training already")
    folder = registry.folder(config.name)
    if record.step < 1 or not (folder / ADAPTER_WEIGHTS).exists():
        raise ResumeError(
            f"--resume: adapter {config.name!r} has no checkpoint (it stopped before its first "
            "step); delete it and train again"
        )
    values = asdict(config)
    values.update({k: v for k, v in record.hyperparameters.items() if k in RESUMED_FIELDS})
    values["epochs"] = None
    return TrainConfig(**values), record


def run_training(
    config: TrainConfig,
    *,
    registry: AdapterRegistry,
    cache_dir: Path,
    on_progress: Callable[[Progress], None] = lambda p: None,
    say: Callable[[str], None] = lambda s: None,
) -> TrainResult:
    """Validate the data, tokenize (or reuse the cache), train, and record the adapter.

    Raises DataError (bad lines, unless skip_invalid), BaseMismatch / ResumeError on a
    --resume that does not fit, FinetuneError for other problems a user can fix.
    """
    config, previous = _begin(config, registry)
    data: DataSet = load_data(config.data, skip_invalid=config.skip_invalid)
    if previous is not None and previous.data_hash != data.digest:
        raise ResumeError(
            f"--resume: the data changed since {config.name!r} was interrupted; resume with "
            "the same data or train a new adapter"
        )
    model_path = local_model_path(config.model)
    base_hash = registry.base_digest(model_path)
    if previous is not None and previous.base_hash != base_hash:
        registry.check_base(config.name, model_path)  # raises BaseMismatch with the message

    import mlx.core as mx
    import mlx.optimizers as optim
    import numpy as np
    from mlx.utils import tree_flatten, tree_unflatten
    from mlx_lm import load
    from mlx_lm.tuner.trainer import TrainingArgs, default_loss, train

    from local.finetune.pipeline import Batcher, planned_padding_share, prepare, tokenizer_digest

    say(f"loading {config.model}")
    model, tokenizer = load(str(model_path))[:2]
    prepared = prepare(
        data,
        tokenizer,
        tokenizer_hash=tokenizer_digest(model_path),
        cache_dir=cache_dir,
        max_seq_len=config.max_seq_len,
        mask_prompt=config.mask_prompt,
    )
    train_set, valid_set = prepared.train, prepared.valid
    if len(train_set) < config.batch_size:
        raise FinetuneError(
            f"the training split has {len(train_set)} rows, fewer than --batch-size "
            f"{config.batch_size}; add data or lower the batch size"
        )
    iters = config.iters or math.ceil((config.epochs or 1.0) * len(train_set) / config.batch_size)
    layers = len(model.layers)
    if config.layers > layers:
        config.layers = layers  # "the last 16 blocks" of a smaller model: all of them
    quantized = _is_quantized(model)
    if quantized and config.kind == "full":
        raise FinetuneError(
            "a full fine-tune needs an unquantized base model; use --type lora (QLoRA) "
            "or a float16/bfloat16 model"
        )
    padding = planned_padding_share(train_set.lengths, config.batch_size, cap=config.max_seq_len)
    say(
        f"data: {len(train_set)} train / {len(valid_set)} validation rows, "
        f"{train_set.num_tokens:,} train tokens ({'cached' if prepared.cache_hit else 'tokenized'})"
        f"; padding share {padding:.1%}"
    )

    mx.random.seed(config.seed)
    np.random.seed(config.seed)
    _attach(model, config)
    folder = registry.folder(config.name)
    folder.mkdir(parents=True, exist_ok=True)
    # mlx-lm's trainer writes its weights in place; a running chat re-reads an adapter whose
    # files change, so it writes into scratch files here, renamed over the real ones (weights
    # first, then the config that describes them) once training ends.
    scratch_weights = folder / f".partial-{ADAPTER_WEIGHTS}"
    scratch_state = folder / f".partial-{OPTIMIZER_STATE}"

    start = 0
    optimizer = optim.Adam(learning_rate=config.learning_rate)
    if previous is not None:
        start = previous.step
        model.load_weights(str(folder / ADAPTER_WEIGHTS), strict=False)
        state_file = folder / OPTIMIZER_STATE
        if state_file.exists():
            optimizer.init(model.trainable_parameters())
            state = cast(dict[str, Any], mx.load(str(state_file)))
            optimizer.state = tree_unflatten(list(state.items()))
        say(f"continuing {config.name} from step {start} of {iters}")
    record = previous or AdapterRecord(
        name=config.name,
        base_model=config.model,
        base_hash=base_hash,
        kind=config.kind,
        data_hash=data.digest,
        data_path=str(Path(config.data).resolve()),
        quantized_base=quantized,
    )
    record.hyperparameters = _hyperparameters(config, iters)
    record.iters = iters
    record.status = "training"
    registry.save(record)

    batcher = Batcher(seed=config.seed, skip=start)
    reporter = Reporter(start, iters, on_progress)
    args = TrainingArgs(
        batch_size=config.batch_size,
        iters=iters - start,
        val_batches=config.val_batches,
        steps_per_report=min(config.steps_per_report, max(1, iters - start)),
        steps_per_eval=config.steps_per_eval,
        steps_per_save=iters + 1,  # saving is ours: at the end and on Ctrl-C
        max_seq_length=config.max_seq_len,
        adapter_file=str(scratch_weights),
        grad_checkpoint=config.grad_checkpoint,
    )

    def request_stop() -> None:
        batcher.stop_requested = True

    mx.reset_peak_memory()
    started = time.perf_counter()
    with stop_on_sigint(request_stop, say), quiet_mlx_ui():
        train(
            model=model,
            optimizer=optimizer,
            train_dataset=train_set,
            val_dataset=valid_set if len(valid_set) else None,
            args=args,
            loss=default_loss,
            iterate_batches=batcher,
            training_callback=cast(Any, reporter),  # duck-typed TrainingCallback
        )
    wall = time.perf_counter() - started
    step = min(batcher.yielded, iters)
    interrupted = batcher.stop_requested and step < iters
    mx.save_safetensors(str(scratch_state), dict(tree_flatten(optimizer.state)))
    os.replace(scratch_weights, folder / ADAPTER_WEIGHTS)
    os.replace(scratch_state, folder / OPTIMIZER_STATE)
    _write_json(folder / ADAPTER_CONFIG, _adapter_config(config, iters))

    metrics = dict(record.metrics)
    metrics.update(
        {
            "train_loss": reporter.last_train_loss,
            "val_loss": reporter.last_val_loss,
            "tokens_per_s": reporter.tokens_per_s,
            "trained_tokens": metrics.get("trained_tokens", 0) + reporter.trained_tokens,
            "padding_share": batcher.padding_share,
            "peak_memory_gb": reporter.peak_memory_gb,
            "train_seconds": metrics.get("train_seconds", 0.0) + wall,
        }
    )
    if previous is None:
        metrics["initial_val_loss"] = reporter.first_val_loss
    record.metrics = metrics
    record.step = step
    record.status = "interrupted" if interrupted else "complete"
    registry.save(record)
    if record.status == "complete":
        (folder / OPTIMIZER_STATE).unlink(missing_ok=True)  # only a checkpoint needs it
    skipped = [i for i in data.issues if i.fatal]
    return TrainResult(record, folder, interrupted, prepared.warnings, skipped)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    import json

    write_atomically(path, json.dumps(data, indent=4, sort_keys=True))
