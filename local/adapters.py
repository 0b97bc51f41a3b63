"""LoRA adapters for the engine, in two halves so that loading one does not stall answers.

- `AdapterReader` runs on a thread of its own, without MLX: it resolves a name to a folder,
  reads the files and hashes them. The hash names the adapter's version: an adapter retrained
  under the same name has other bytes, so the engine loads it again instead of answering with
  the old weights. A file that has not changed since the last look (same inode, size and
  modification time) is not read again.
- `build_adapter_model` runs on the worker (MLX objects live on one thread): a second model
  object that shares the base weights, with the adapter's LoRA layers on top, from the bytes
  already in memory (no disk I/O on the worker).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.protocol import ModelError

__all__ = ["AdapterFiles", "AdapterReader", "build_adapter_model"]

CONFIG = "adapter_config.json"
WEIGHTS = "adapters.safetensors"


@dataclass(frozen=True, slots=True)
class AdapterFiles:
    """One version of an adapter: its name, its content hash, and (when asked) its bytes."""

    name: str
    digest: str
    folder: Path
    config: bytes = b""
    weights: bytes = b""

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.digest)


class AdapterReader:
    """Name → AdapterFiles, reading the disk only when the files changed. Thread-confined."""

    def __init__(self, resolver: Callable[[str], Path] | None) -> None:
        self.resolver = resolver
        self._seen: dict[Path, tuple[tuple[int, ...], str]] = {}

    def read(self, name: str, loaded: frozenset[tuple[str, str]]) -> AdapterFiles:
        """The adapter `name` as it is on disk now; its bytes only when `loaded` (the versions
        the engine holds) does not have it. Raises ModelError with a sentence for a person."""
        if self.resolver is None:
            raise ModelError(f"adapter {name!r} was asked for, but this engine has no adapters")
        try:
            folder = Path(self.resolver(name))
        except Exception as exc:  # the resolver's own errors carry a sentence for a person
            raise ModelError(str(exc) or f"no adapter called {name!r}") from exc
        if not (folder / CONFIG).exists():
            raise ModelError(
                f"adapter folder {folder} has no {CONFIG}; train or import it again"
            )
        try:
            stamp = _stamp(folder)
            seen = self._seen.get(folder)
            if seen is not None and seen[0] == stamp and (name, seen[1]) in loaded:
                return AdapterFiles(name, seen[1], folder)
            config = (folder / CONFIG).read_bytes()
            weights = (folder / WEIGHTS).read_bytes()
        except OSError as exc:
            raise ModelError(f"cannot read adapter {name!r} in {folder}: {exc}") from exc
        digest = hashlib.sha256(config + b"\0" + weights).hexdigest()[:16]
        self._seen[folder] = (stamp, digest)
        return AdapterFiles(name, digest, folder, config, weights)


def _stamp(folder: Path) -> tuple[int, ...]:
    out: list[int] = []
    for file in (CONFIG, WEIGHTS):
        st = os.stat(folder / file)
        out += [st.st_ino, st.st_size, st.st_mtime_ns]
    return tuple(out)


def build_adapter_model(base_model: Any, base_path: Path, files: AdapterFiles) -> Any:
    """A model object sharing `base_model`'s weights, with the adapter's LoRA layers on top.

    Sharing matters on a laptop: the base weights are in memory once, whatever the number of
    adapters. mlx arrays are immutable, so sharing them between the two modules is safe."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load_model

    try:
        config = json.loads(files.config)
        model, _ = load_model(base_path, lazy=True)
        model.update(base_model.parameters())
        kind = config.get("fine_tune_type", "lora")
        if kind == "full":
            raise ValueError("a full fine-tune is a model of its own, not an adapter")
        linear_to_lora_layers(
            model, config["num_layers"], config["lora_parameters"], use_dora=kind == "dora"
        )
        weights = mx.load(io.BytesIO(files.weights), format="safetensors")
        assert isinstance(weights, dict)
        flat: Any = tree_flatten(model.parameters())
        shapes = {k: v.shape for k, v in flat if k.rsplit(".", 1)[-1] in ("lora_a", "lora_b", "m")}
        wrong = [k for k, w in weights.items() if shapes.get(k) != w.shape]
        if wrong:
            raise ValueError(f"{len(wrong)} weights match no adapter layer, e.g. {wrong[0]}")
        model.load_weights(list(weights.items()), strict=False)
        model.eval()
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = " ".join(lines[:2]) if lines else type(exc).__name__
        raise ModelError(
            f"adapter {files.name} does not fit {base_path.name} ({detail})"
        ) from exc
    return model
