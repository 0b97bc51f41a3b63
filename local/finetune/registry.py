"""The adapter registry: one folder per adapter under the data directory.

Each folder is in mlx-lm's adapter layout (``adapters.safetensors`` + ``adapter_config.json``,
as ``mlx_lm lora`` writes it), so ``mlx_lm.load(model, adapter_path=folder)`` and the local
engine use it as it is, plus ``tandem.json``: the base model's id and a content hash of its
weights, the data hash, hyperparameters, metrics, dates and the training state. An adapter
is only applied to the weights it was trained on (`check_base`).

The folder root is passed in (the composition root knows where the data directory is).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from local.finetune.errors import AdapterNotFound, BaseMismatch, FinetuneError

__all__ = [
    "ADAPTER_CONFIG",
    "ADAPTER_WEIGHTS",
    "METADATA",
    "AdapterRecord",
    "AdapterRegistry",
    "model_digest",
    "validate_name",
    "write_atomically",
]

ADAPTER_WEIGHTS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
METADATA = "tandem.json"
OPTIMIZER_STATE = "optimizer.safetensors"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,47}$")
_HASH_CACHE = ".weights-hashes.json"


def validate_name(name: str) -> str:
    """Adapter names: 1-48 lower-case letters, digits, '.', '_' or '-' (the cloud's rule too)."""
    if not NAME_RE.match(name):
        raise FinetuneError(
            f"adapter name {name!r} is not allowed: use 1-48 lower-case letters, digits, "
            "'.', '_' or '-', starting with a letter or digit"
        )
    return name


@dataclass(slots=True)
class AdapterRecord:
    """What `tandem.json` holds about one adapter."""

    name: str
    base_model: str
    """The model id or folder it was trained on, as given to --model."""
    base_hash: str
    """sha256 over the base model's weight files: an adapter fits only these weights."""
    kind: str
    """lora, dora or full; "qlora" is lora on a quantized base (see `quantized_base`)."""
    data_hash: str
    data_path: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    status: str = "training"
    """training, interrupted (a checkpoint `--resume` continues) or complete."""
    step: int = 0
    iters: int = 0
    quantized_base: bool = False
    created: str = field(default_factory=lambda: time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    updated: str = ""

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AdapterRecord:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def _weight_files(model_path: Path) -> list[Path]:
    files = sorted(model_path.glob("*.safetensors"))
    return files or sorted(model_path.glob("*.bin")) or sorted(model_path.glob("*.npz"))


def model_digest(model_path: Path, cache_file: Path | None = None) -> str:
    """sha256 over a model folder's weight files, in name order. Hashing gigabytes takes
    seconds, so results are kept in `cache_file` keyed by path, size and mtime."""
    model_path = Path(model_path).resolve()
    files = _weight_files(model_path)
    if not files:
        raise FinetuneError(f"{model_path} holds no weight files (*.safetensors)")
    stamp = [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    cache: dict[str, Any] = {}
    if cache_file is not None and cache_file.exists():
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
    hit = cache.get(str(model_path))
    if isinstance(hit, dict) and hit.get("stamp") == stamp:
        return str(hit["sha256"])
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 22):
                h.update(chunk)
    digest = h.hexdigest()
    if cache_file is not None:
        cache[str(model_path)] = {"stamp": stamp, "sha256": digest}
        write_atomically(cache_file, json.dumps(cache))
    return digest


def write_atomically(path: Path, text: str) -> None:
    """Write `path` whole or not at all: into a uniquely named file beside it, flushed to
    disk, then renamed over it. A crash (or a second writer) never leaves half a file, and
    two threads of one process never share a scratch name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, scratch = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(scratch, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(scratch)
        raise


class AdapterRegistry:
    """Adapters under one root folder (the app passes `paths().adapters_dir`)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def folder(self, name: str) -> Path:
        return self.root / validate_name(name)

    def exists(self, name: str) -> bool:
        return (self.folder(name) / METADATA).exists()

    def get(self, name: str) -> AdapterRecord:
        """The record of one adapter; AdapterNotFound if there is none."""
        path = self.folder(name) / METADATA
        if not path.exists():
            known = ", ".join(r.name for r in self.list()) or "none yet"
            raise AdapterNotFound(
                f"no adapter named {name!r} (known: {known}); see `tandem adapters list`"
            )
        try:
            return AdapterRecord.from_json(json.loads(path.read_text()))
        except (OSError, ValueError, TypeError) as exc:
            raise FinetuneError(f"{path} is damaged ({exc}); delete the adapter") from exc

    def save(self, record: AdapterRecord) -> None:
        """Write the record (atomically, so a crash never leaves half a file)."""
        record.updated = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        text = json.dumps(asdict(record), indent=2, sort_keys=True)
        write_atomically(self.folder(record.name) / METADATA, text)

    def list(self) -> list[AdapterRecord]:
        """Every adapter, by name."""
        if not self.root.exists():
            return []
        out = []
        for meta in sorted(self.root.glob(f"*/{METADATA}")):
            try:
                out.append(AdapterRecord.from_json(json.loads(meta.read_text())))
            except (OSError, ValueError, TypeError):
                continue  # a damaged record is shown by `show`, not allowed to break `list`
        return out

    def delete(self, name: str) -> None:
        self.get(name)  # AdapterNotFound with the list of names
        shutil.rmtree(self.folder(name))

    def base_digest(self, model_path: Path) -> str:
        return model_digest(model_path, self.root / _HASH_CACHE)

    def check_base(self, name: str, model_path: Path) -> AdapterRecord:
        """The record, if `model_path` holds the weights the adapter was trained on;
        BaseMismatch otherwise."""
        record = self.get(name)
        digest = self.base_digest(model_path)
        if digest != record.base_hash:
            raise BaseMismatch(
                f"adapter {name!r} was trained on {record.base_model} (weights "
                f"{record.base_hash[:12]}), but {model_path} has other weights ({digest[:12]}); "
                "use it with its own base model or train a new adapter on this one"
            )
        return record

    def resolve(self, name: str, base: Path | None = None) -> Path:
        """The adapter's folder in mlx-lm's layout, for `mlx_lm.load(adapter_path=...)` and the
        local engine. With `base`, refuses (BaseMismatch) an adapter trained on other weights."""
        record = self.check_base(name, base) if base is not None else self.get(name)
        folder = self.folder(name)
        if record.status == "training" or not (folder / ADAPTER_WEIGHTS).exists():
            raise FinetuneError(
                f"adapter {name!r} has no finished weights yet (status: {record.status})"
            )
        return folder

    def resolver(self, base: Path) -> Callable[[str], Path]:
        """`resolve` bound to one base model: the `adapter_resolver` the LocalEngine takes."""

        def resolve(name: str) -> Path:
            return self.resolve(name, base)

        return resolve
