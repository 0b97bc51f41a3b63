"""Users' LoRA adapters: validate an upload, store it in the owner's namespace, load it into vLLM.

An upload is the PEFT layout vLLM loads: `adapter_config.json` and `adapter_model.safetensors`.
Before anything reaches vLLM the gateway checks, against the base model's `config.json` and
`--max-lora-rank`: safetensors only (the header is parsed here; pickled `.bin` files are
refused), the size limit, the rank, no DoRA, and every tensor's name, layer and shape.

Namespaces: adapters live under `<root>/<owner>/<name>/`, and vLLM knows each one by an
internal name derived from its owner, which no client ever sees. A client names its adapters
by their short names, and the gateway resolves only the caller's own.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.protocol import TandemError

__all__ = ["AdapterError", "AdapterStore", "BaseShape", "StoredAdapter", "validate_adapter"]

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,47}$")
CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
_DTYPES = {"F32", "F16", "BF16"}
_KEY_RE = re.compile(
    r"^base_model\.model\.model\.layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight$"
)


class AdapterError(TandemError, ValueError):
    """An upload or request the gateway refuses; the message says what to fix."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class BaseShape:
    """The base model's dimensions that a LoRA's shapes must match."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BaseShape:
        hidden = int(config["hidden_size"])
        heads = int(config["num_attention_heads"])
        return cls(
            hidden=hidden,
            intermediate=int(config["intermediate_size"]),
            layers=int(config["num_hidden_layers"]),
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads", heads)),
            head_dim=int(config.get("head_dim") or hidden // heads),
        )

    @classmethod
    def from_model_dir(cls, path: Path) -> BaseShape:
        return cls.from_config(json.loads((path / "config.json").read_text()))

    def io(self, module: str) -> tuple[int, int] | None:
        """(in_features, out_features) of a projection, None if it is not one."""
        q, kv = self.heads * self.head_dim, self.kv_heads * self.head_dim
        return {
            "q_proj": (self.hidden, q),
            "k_proj": (self.hidden, kv),
            "v_proj": (self.hidden, kv),
            "o_proj": (q, self.hidden),
            "gate_proj": (self.hidden, self.intermediate),
            "up_proj": (self.hidden, self.intermediate),
            "down_proj": (self.intermediate, self.hidden),
        }.get(module)


def read_safetensors_header(data: bytes) -> dict[str, Any]:
    """The header of a safetensors file; AdapterError if it is not one."""
    if len(data) < 8:
        raise AdapterError(f"{WEIGHTS_FILE} is not a safetensors file")
    (size,) = struct.unpack("<Q", data[:8])
    if size > len(data) - 8 or size > 16 * 2**20:
        raise AdapterError(f"{WEIGHTS_FILE} is not a safetensors file (bad header length)")
    try:
        header = json.loads(data[8 : 8 + size])
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AdapterError(f"{WEIGHTS_FILE} is not a safetensors file (bad header)") from None
    if not isinstance(header, dict):
        raise AdapterError(f"{WEIGHTS_FILE} is not a safetensors file (bad header)")
    header.pop("__metadata__", None)
    body = len(data) - 8 - size
    for name, info in header.items():
        start, end = info.get("data_offsets", (0, -1))
        if not 0 <= start <= end <= body:
            raise AdapterError(f"{WEIGHTS_FILE}: tensor {name} lies outside the file")
    return header


def validate_adapter(config_bytes: bytes, weights: bytes, base: BaseShape, max_rank: int) -> int:
    """Check an adapter against the base model; return its rank. Raises AdapterError."""
    try:
        config = json.loads(config_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise AdapterError(f"{CONFIG_FILE} is not valid JSON") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{CONFIG_FILE} must be a JSON object")
    if str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise AdapterError(f"only LoRA adapters are supported, not {config.get('peft_type')}")
    if config.get("use_dora"):
        raise AdapterError("DoRA adapters are not supported by vLLM; train a plain LoRA")
    rank = config.get("r")
    if not isinstance(rank, int) or rank < 1:
        raise AdapterError(f"{CONFIG_FILE}: r must be a positive integer")
    if rank > max_rank:
        raise AdapterError(f"adapter rank {rank} exceeds this server's maximum of {max_rank}")
    header = read_safetensors_header(weights)
    if not header:
        raise AdapterError(f"{WEIGHTS_FILE} holds no tensors")
    for key, info in header.items():
        match = _KEY_RE.match(key)
        if not match:
            raise AdapterError(
                f"unexpected tensor {key}: expected "
                "base_model.model.model.layers.N.<module>.lora_A/B.weight"
            )
        layer, _, module, ab = int(match[1]), match[2], match[3], match[4]
        if layer >= base.layers:
            raise AdapterError(f"tensor {key}: the base model has {base.layers} layers")
        io = base.io(module)
        if io is None:
            raise AdapterError(f"tensor {key}: {module} is not a projection of the base model")
        expected = [rank, io[0]] if ab == "A" else [io[1], rank]
        if list(info.get("shape", [])) != expected:
            raise AdapterError(
                f"tensor {key} has shape {info.get('shape')}, "
                f"expected {expected} for this base model"
            )
        if info.get("dtype") not in _DTYPES:
            raise AdapterError(f"tensor {key}: dtype {info.get('dtype')} (use F32, F16 or BF16)")
    return rank


@dataclass(frozen=True, slots=True)
class StoredAdapter:
    owner: str
    name: str
    path: Path
    rank: int

    @property
    def vllm_name(self) -> str:
        """The name vLLM knows it by: unique per owner, never shown to clients."""
        return f"{owner_id(self.owner)}--{self.name}"


def owner_id(owner: str) -> str:
    return "u" + hashlib.sha256(owner.encode()).hexdigest()[:16]


class AdapterStore:
    """Adapters on disk, one folder per owner."""

    def __init__(self, root: Path, base: BaseShape, max_rank: int) -> None:
        self.root = root
        self.base = base
        self.max_rank = max_rank

    def _dir(self, owner: str, name: str) -> Path:
        return self.root / owner_id(owner) / name

    def check_name(self, name: str) -> None:
        if not NAME_RE.match(name):
            raise AdapterError(
                "adapter names are 1-48 lower-case letters, digits, '.', '_' or '-', "
                "starting with a letter or digit"
            )

    def save(self, owner: str, name: str, config_bytes: bytes, weights: bytes) -> StoredAdapter:
        """Validate and store (replacing an adapter of the same name)."""
        self.check_name(name)
        rank = validate_adapter(config_bytes, weights, self.base, self.max_rank)
        folder = self._dir(owner, name)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / CONFIG_FILE).write_bytes(config_bytes)
        (folder / WEIGHTS_FILE).write_bytes(weights)
        (folder / "owner").write_text(owner)
        return StoredAdapter(owner, name, folder, rank)

    def get(self, owner: str, name: str) -> StoredAdapter | None:
        if not NAME_RE.match(name):
            return None
        folder = self._dir(owner, name)
        if not (folder / WEIGHTS_FILE).exists():
            return None
        rank = int(json.loads((folder / CONFIG_FILE).read_text()).get("r", 0))
        return StoredAdapter(owner, name, folder, rank)

    def owned(self, owner: str) -> list[StoredAdapter]:
        folder = self.root / owner_id(owner)
        if not folder.is_dir():
            return []
        found = (self.get(owner, p.name) for p in sorted(folder.iterdir()))
        return [a for a in found if a is not None]

    def all(self) -> list[StoredAdapter]:
        """Every stored adapter (to load them again after vLLM restarts)."""
        out: list[StoredAdapter] = []
        if not self.root.is_dir():
            return out
        for owner_file in sorted(self.root.glob("*/*/owner")):
            adapter = self.get(owner_file.read_text(), owner_file.parent.name)
            if adapter is not None:
                out.append(adapter)
        return out

    def delete(self, owner: str, name: str) -> bool:
        folder = self._dir(owner, name)
        if not folder.is_dir() or not NAME_RE.match(name):
            return False
        shutil.rmtree(folder)
        return True
