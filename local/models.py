"""Models on disk: what is there, which one suits this machine, and whether one fits in memory.

Nothing here imports MLX: `tandem models list` and the memory guard read config.json and file
sizes only.

Default model by unified memory (overridable with `model = "..."` in the config file):

    memory      default                          why
    < 12 GB     mlx-community/Qwen3-0.6B-4bit    ~0.4 GB of weights: leaves room for the apps
    12–24 GB    mlx-community/Qwen3-4B-4bit      ~2.3 GB: the best small model that stays fast
    ≥ 24 GB     mlx-community/Qwen3-8B-4bit      ~4.6 GB
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from local.loading import find_model, folder_name_for
from router.protocol import ModelError

__all__ = [
    "DEFAULTS_BY_MEMORY",
    "HubUnreachable",
    "MemoryEstimate",
    "ModelInfo",
    "ModelTooLarge",
    "available_memory_bytes",
    "check_fits",
    "default_model",
    "estimate_memory",
    "folder_name_for",
    "list_models",
    "model_folder_if_local",
    "model_info",
    "pull",
    "pulled_default",
    "resolve",
    "total_memory_bytes",
]

GB = 1e9
# (at least this much memory, hub id): the first row whose threshold the machine reaches.
DEFAULTS_BY_MEMORY: tuple[tuple[float, str], ...] = (
    (24 * 2**30, "mlx-community/Qwen3-8B-4bit"),
    (12 * 2**30, "mlx-community/Qwen3-4B-4bit"),
    (0, "mlx-community/Qwen3-0.6B-4bit"),
)
# Memory the OS and the other apps keep; a model is refused if it would eat into it.
HEADROOM_BYTES = int(0.5 * GB)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class ModelTooLarge(ModelError):
    """The model (weights + KV cache for the context) does not fit in the memory available."""

    def __init__(self, message: str, *, needed: int, available: int) -> None:
        super().__init__(message, backend="local")
        self.needed = needed
        self.available = available


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """A model folder as `tandem models list` shows it."""

    name: str
    path: Path
    size_bytes: int
    bits: int | None
    """Quantization bits, or None for a float model."""
    dtype: str
    context_window: int | None
    model_type: str


@dataclass(frozen=True, slots=True)
class MemoryEstimate:
    weights_bytes: int
    kv_bytes: int
    context_tokens: int

    @property
    def total(self) -> int:
        return self.weights_bytes + self.kv_bytes


def _config(folder: Path) -> dict[str, Any]:
    try:
        data = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _text_config(config: dict[str, Any]) -> dict[str, Any]:
    nested = config.get("text_config")
    return {**config, **nested} if isinstance(nested, dict) else config


def model_info(folder: Path, name: str | None = None) -> ModelInfo | None:
    """What a model folder holds; None if it is not a model folder."""
    config = _config(folder)
    if not config:
        return None
    text = _text_config(config)
    quant = config.get("quantization") or config.get("quantization_config") or {}
    bits = quant.get("bits") if isinstance(quant, dict) else None
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    ctx = text.get("max_position_embeddings")
    return ModelInfo(
        name=name or folder.name,
        path=folder,
        size_bytes=size,
        bits=int(bits) if isinstance(bits, int) else None,
        dtype=str(text.get("torch_dtype") or text.get("dtype") or "?"),
        context_window=int(ctx) if isinstance(ctx, int) else None,
        model_type=str(text.get("model_type", "?")),
    )


def list_models(models_dir: Path) -> list[ModelInfo]:
    """Every model folder directly under `models_dir`, by name."""
    if not models_dir.is_dir():
        return []
    out = []
    for child in sorted(models_dir.iterdir()):
        if child.is_dir():
            info = model_info(child, child.name.replace("--", "/", 1))
            if info is not None:
                out.append(info)
    return out


def resolve(spec: str, models_dir: Path) -> str:
    """The folder the chat loads for `spec` (the loader's own lookup, without the network);
    `spec` as is when it is not on this machine."""
    folder = find_model(spec, models_dir)
    return str(folder) if folder is not None else spec


def model_folder_if_local(spec: str | Path | None) -> Path | None:
    if spec is None:
        return None
    path = Path(str(spec)).expanduser()
    return path if (path / "config.json").exists() else None


def total_memory_bytes() -> int:
    """Physical (on Apple silicon: unified) memory."""
    import psutil

    return int(psutil.virtual_memory().total)


def available_memory_bytes() -> int:
    """Memory that can be used without swapping (unified memory on a Mac)."""
    import psutil

    return int(psutil.virtual_memory().available)


def default_model(total_bytes: int | None = None) -> str:
    """The default hub model for a machine with `total_bytes` of memory."""
    total = total_memory_bytes() if total_bytes is None else total_bytes
    for threshold, model in DEFAULTS_BY_MEMORY:
        if total >= threshold:
            return model
    return DEFAULTS_BY_MEMORY[-1][1]


def pulled_default(models_dir: Path, total_bytes: int | None = None) -> tuple[str, Path] | None:
    """(hub id, folder) of the default model when it is on this machine already: the one for
    this memory, else a smaller one from the table that was pulled; None when none was."""
    picked = default_model(total_bytes)
    ids = [model for _, model in DEFAULTS_BY_MEMORY]
    for hub_id in ids[ids.index(picked):]:
        folder = find_model(hub_id, models_dir)
        if folder is not None:
            return hub_id, folder
    return None


_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def estimate_memory(folder: Path, context_tokens: int | None = None) -> MemoryEstimate:
    """Weights (their file sizes: already quantized on disk) + the KV cache for the context.

    KV cache = layers × kv heads × head dim × 2 (keys and values) × bytes × context tokens.
    """
    config = _text_config(_config(folder))
    weights = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    layers = int(config.get("num_hidden_layers") or 0)
    heads = int(config.get("num_attention_heads") or 1)
    kv_heads = int(config.get("num_key_value_heads") or heads)
    hidden = int(config.get("hidden_size") or 0)
    head_dim = int(config.get("head_dim") or (hidden // heads if heads else 0))
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float16")
    width = _DTYPE_BYTES.get(dtype, 2)
    ctx = context_tokens or int(config.get("max_position_embeddings") or 4096)
    kv = layers * kv_heads * head_dim * 2 * width * ctx
    return MemoryEstimate(weights, kv, ctx)


def check_fits(
    folder: Path,
    *,
    context_tokens: int | None = None,
    draft: Path | None = None,
    available_bytes: int | None = None,
) -> MemoryEstimate:
    """Refuse (ModelTooLarge) a model whose weights + KV cache exceed the memory available."""
    estimate = estimate_memory(folder, context_tokens)
    needed = estimate.total
    if draft is not None:
        needed += estimate_memory(draft, estimate.context_tokens).total
    available = available_memory_bytes() if available_bytes is None else available_bytes
    if needed > available - HEADROOM_BYTES:
        smaller = default_model(available)
        raise ModelTooLarge(
            f"{folder.name} needs {needed / GB:.1f} GB ({estimate.weights_bytes / GB:.1f} GB "
            f"weights + {estimate.kv_bytes / GB:.1f} GB KV cache for {estimate.context_tokens} "
            f"tokens), {max(available, 0) / GB:.1f} GB available; try a smaller context "
            f"(context_window in the config), a 4-bit model (`tandem models quantize`) or "
            f"{smaller}",
            needed=needed,
            available=available,
        )
    return estimate


class HubUnreachable(ModelError):
    """The Hugging Face hub cannot be reached (offline, proxy, firewall)."""


PULL_PATTERNS = ["*.json", "*.safetensors", "*.py", "tokenizer.model", "*.tiktoken", "*.txt",
                 "*.jsonl", "*.jinja"]
"""The files of a hub repository that a pull downloads: what mlx-lm loads, no extras."""

PullProgress = Callable[[int, int], None]
"""Called with (bytes on disk so far, bytes expected; 0 when unknown) while a pull runs."""


def pull(
    hub_id: str,
    models_dir: Path,
    *,
    revision: str | None = None,
    progress: PullProgress | None = None,
) -> Path:
    """Download `hub_id` into `models_dir` (huggingface_hub shows a progress bar; `progress`,
    when given, hears about it twice a second as well, from another thread).

    Downloads into a `.partial` folder first, so an interrupted pull never looks complete.
    """
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if not _HUB_ID.match(hub_id):
        raise ModelError(f"{hub_id!r} is not a hub id; expected ORG/NAME, e.g. "
                         f"{DEFAULTS_BY_MEMORY[-1][1]}")
    target = models_dir / folder_name_for(hub_id)
    if (target / "config.json").exists():
        return target
    partial = models_dir / f".{folder_name_for(hub_id)}.partial"
    partial.mkdir(parents=True, exist_ok=True)
    watcher = _PullWatcher(hub_id, revision, partial, progress) if progress else None
    try:
        snapshot_download(
            hub_id, revision=revision, local_dir=partial, allow_patterns=PULL_PATTERNS
        )
    except (RepositoryNotFoundError, GatedRepoError, RevisionNotFoundError) as exc:
        raise ModelError(
            f"no model called {hub_id} on the Hugging Face hub (or it needs a login); "
            "check the id"
        ) from exc
    except Exception as exc:  # offline, DNS, proxy, TLS: they come in many classes
        _remove_if_empty(partial)
        if not isinstance(exc, (LocalEntryNotFoundError, OSError)) and "connect" not in repr(
            exc
        ).lower():
            raise ModelError(f"pulling {hub_id} failed: {exc}") from exc
        raise HubUnreachable(
            f"cannot reach the Hugging Face hub to pull {hub_id}; copy the model folder to "
            f"this machine and pass it as --model PATH (or put it in {models_dir})"
        ) from exc
    finally:
        if watcher is not None:
            watcher.stop()
    if not (partial / "config.json").exists():
        raise ModelError(f"{hub_id} has no config.json: not a model mlx-lm can load")
    partial.rename(target)
    return target


def _remove_if_empty(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not empty: keep it, the next pull resumes
        folder.rmdir()


class _PullWatcher:
    """Reports a running pull's bytes on disk (huggingface_hub writes `*.incomplete` files
    under the target folder as they arrive) against the repository's size."""

    EVERY_S = 0.5

    def __init__(
        self, hub_id: str, revision: str | None, folder: Path, report: PullProgress
    ) -> None:
        self._hub_id, self._revision, self._folder, self._report = hub_id, revision, folder, report
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pull-progress", daemon=True)
        self._thread.start()

    def _expected(self) -> int:
        from huggingface_hub import HfApi

        try:
            info = HfApi().model_info(self._hub_id, revision=self._revision, files_metadata=True)
        except Exception:  # unknown size: progress shows bytes only
            return 0
        return sum(
            f.size or 0
            for f in info.siblings or []
            if any(fnmatch.fnmatch(f.rfilename.rsplit("/", 1)[-1], p) for p in PULL_PATTERNS)
        )

    def _on_disk(self) -> int:
        total = 0
        for f in self._folder.rglob("*"):
            with contextlib.suppress(OSError):  # renamed or removed while we look
                if f.is_file():
                    total += f.stat().st_size
        return total

    def _run(self) -> None:
        expected = self._expected()
        while not self._done.wait(self.EVERY_S):
            self._report(self._on_disk(), expected)

    def stop(self) -> None:
        self._done.set()
        self._thread.join(timeout=2)
