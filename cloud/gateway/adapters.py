"""Users' LoRA adapters: validate an upload, store it in the owner's namespace, load it into vLLM.

An upload is the PEFT layout vLLM loads: `adapter_config.json` and `adapter_model.safetensors`.
Before anything reaches vLLM the gateway checks, against the base model's `config.json` and
`--max-lora-rank`: safetensors only (the header is parsed here; pickled `.bin` files are
refused), the size limit, the rank, no DoRA, and every tensor's name, layer and shape.

Namespaces: adapters live under `<root>/<owner>/<name>/`, and vLLM knows each one by an
internal name derived from its owner, which no client ever sees. A client names its adapters
by their short names, and the gateway resolves only the caller's own.

Versions: each upload is staged in a folder of its own, `<name>/<version>/`, and becomes the
adapter only when the `current` file is switched to it (an atomic rename), after vLLM has loaded
it. A replacement that vLLM refuses leaves the old version answering. Uploads are streamed to
disk and validated from the file (the safetensors header alone is read), never held in memory.
Error messages name the file kinds, never a server path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

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


def read_safetensors_header(data: bytes | IO[bytes], size: int | None = None) -> dict[str, Any]:
    """The header of a safetensors file (bytes, or a binary file of `size` bytes);
    AdapterError (400) if it is not one."""
    if isinstance(data, bytes):
        head, total = data[:8], len(data)
    else:
        data.seek(0)
        head, total = data.read(8), size if size is not None else 0
    bad = f"{WEIGHTS_FILE} is not a safetensors file"
    if len(head) < 8:
        raise AdapterError(bad)
    (length,) = struct.unpack("<Q", head)
    if length > total - 8 or length > 16 * 2**20:
        raise AdapterError(f"{bad} (bad header length)")
    raw = data[8 : 8 + length] if isinstance(data, bytes) else data.read(length)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise AdapterError(f"{bad} (bad header)") from None
    if not isinstance(header, dict):
        raise AdapterError(f"{bad} (bad header)")
    header.pop("__metadata__", None)
    body = total - 8 - length
    for name, info in header.items():
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
        ):
            raise AdapterError(f"{bad} (tensor {name[:80]!r} has no valid data_offsets)")
        start, end = offsets
        if not 0 <= start <= end <= body:
            raise AdapterError(f"{WEIGHTS_FILE}: tensor {name[:80]} lies outside the file")
    return header


def _shown(value: Any) -> str:
    """A header value for an error message: short, and never str() of a deep structure (which
    can itself raise RecursionError)."""
    if isinstance(value, list) and all(type(v) is int for v in value[:8]):
        return str(value[:8])[:40]
    return value[:16] if isinstance(value, str) else type(value).__name__


def validate_adapter(
    config_bytes: bytes,
    weights: bytes | IO[bytes],
    base: BaseShape,
    max_rank: int,
    *,
    weights_size: int | None = None,
) -> int:
    """Check an adapter against the base model; return its rank. Raises AdapterError."""
    try:
        config = json.loads(config_bytes)
    except (UnicodeDecodeError, ValueError, RecursionError):
        # RecursionError: "[" * 65536 nests past the parser's limit; it is no ValueError.
        raise AdapterError(f"{CONFIG_FILE} is not valid JSON") from None
    if not isinstance(config, dict):
        raise AdapterError(f"{CONFIG_FILE} must be a JSON object")
    peft_type = config.get("peft_type", "LORA")
    if not isinstance(peft_type, str) or peft_type.upper() != "LORA":
        shown = peft_type[:40] if isinstance(peft_type, str) else type(peft_type).__name__
        raise AdapterError(f"only LoRA adapters are supported, not {shown}")
    if config.get("use_dora"):
        raise AdapterError("DoRA adapters are not supported by vLLM; train a plain LoRA")
    rank = config.get("r")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise AdapterError(f"{CONFIG_FILE}: r must be a positive integer")
    if rank > max_rank:
        raise AdapterError(f"adapter rank {rank} exceeds this server's maximum of {max_rank}")
    header = read_safetensors_header(weights, weights_size)
    if not header:
        raise AdapterError(f"{WEIGHTS_FILE} holds no tensors")
    for key, info in header.items():
        match = _KEY_RE.match(key)
        if not match:
            raise AdapterError(
                f"unexpected tensor {key[:80]}: expected "
                "base_model.model.model.layers.N.<module>.lora_A/B.weight"
            )
        layer, _, module, ab = int(match[1]), match[2], match[3], match[4]
        if layer >= base.layers:
            raise AdapterError(f"tensor {key}: the base model has {base.layers} layers")
        io = base.io(module)
        if io is None:
            raise AdapterError(f"tensor {key}: {module} is not a projection of the base model")
        expected = [rank, io[0]] if ab == "A" else [io[1], rank]
        shape = info.get("shape")
        if not isinstance(shape, list) or shape != expected:
            raise AdapterError(
                f"tensor {key} has shape {_shown(shape)}, expected {expected} for this base model"
            )
        dtype = info.get("dtype")
        # A set lookup of a list (`"dtype": []`) raises TypeError: check the type first.
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise AdapterError(f"tensor {key}: dtype {_shown(dtype)} "
                               "(use F32, F16 or BF16)")  # fmt: skip
    return rank


@dataclass(frozen=True, slots=True)
class StoredAdapter:
    owner: str
    name: str
    path: Path
    """The folder vLLM loads (this version's)."""
    rank: int
    version: str = ""
    """This upload's id ("" for an adapter stored before versions existed)."""
    size: int = 0
    """Bytes of its weights file."""

    @property
    def vllm_name(self) -> str:
        """The name vLLM knows it by: unique per owner and version, never shown to clients."""
        base = f"{owner_id(self.owner)}--{self.name}"
        return f"{base}--{self.version}" if self.version else base


def owner_id(owner: str) -> str:
    return "u" + hashlib.sha256(owner.encode()).hexdigest()[:16]


CURRENT_FILE = "current"
_VERSION_RE = re.compile(r"^v[0-9a-f]{12}$")


class AdapterStore:
    """Adapters on disk, one folder per owner, one subfolder per uploaded version."""

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

    def stage(
        self, owner: str, name: str, config_bytes: bytes, weights: IO[bytes]
    ) -> StoredAdapter:
        """Copy an upload into a new version folder and validate it there (not yet current:
        `commit` makes it so, `discard` throws it away)."""
        self.check_name(name)
        version = "v" + uuid.uuid4().hex[:12]
        folder = self._dir(owner, name) / version
        folder.mkdir(parents=True, mode=0o700)
        try:
            (folder / CONFIG_FILE).write_bytes(config_bytes)
            with (folder / WEIGHTS_FILE).open("wb") as out:
                weights.seek(0)
                shutil.copyfileobj(weights, out, 1 << 20)
            size = (folder / WEIGHTS_FILE).stat().st_size
            with (folder / WEIGHTS_FILE).open("rb") as f:
                rank = validate_adapter(config_bytes, f, self.base, self.max_rank,
                                        weights_size=size)  # fmt: skip
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            self._tidy(owner, name)
            raise
        return StoredAdapter(owner, name, folder, rank, version, size)

    def commit(self, adapter: StoredAdapter) -> StoredAdapter | None:
        """Make a staged version the current one (an atomic rename); returns the version it
        replaced, whose folder the caller deletes once vLLM has let go of it."""
        old = self.get(adapter.owner, adapter.name)
        folder = self._dir(adapter.owner, adapter.name)
        (folder / "owner").write_text(adapter.owner)
        tmp = folder / f".{CURRENT_FILE}.{uuid.uuid4().hex[:8]}"
        tmp.write_text(adapter.version)
        os.replace(tmp, folder / CURRENT_FILE)
        return old

    def discard(self, adapter: StoredAdapter) -> None:
        """Delete one version's folder (a refused upload, or a replaced version)."""
        if adapter.version:
            shutil.rmtree(adapter.path, ignore_errors=True)
        else:  # the pre-versions layout: the files sit in the adapter's folder itself
            for file in (CONFIG_FILE, WEIGHTS_FILE):
                (adapter.path / file).unlink(missing_ok=True)
        self._tidy(adapter.owner, adapter.name)

    def _tidy(self, owner: str, name: str) -> None:
        folder = self._dir(owner, name)
        if folder.is_dir() and not (folder / CURRENT_FILE).exists() and not any(
            _VERSION_RE.match(p.name) for p in folder.iterdir()
        ):
            shutil.rmtree(folder, ignore_errors=True)

    def get(self, owner: str, name: str) -> StoredAdapter | None:
        if not NAME_RE.match(name):
            return None
        folder = self._dir(owner, name)
        version = ""
        if (folder / CURRENT_FILE).is_file():
            version = (folder / CURRENT_FILE).read_text().strip()
            if not _VERSION_RE.match(version):
                return None
            path = folder / version
        else:
            path = folder
        weights = path / WEIGHTS_FILE
        if not weights.exists():
            return None
        try:
            rank = int(json.loads((path / CONFIG_FILE).read_text()).get("r", 0))
        except (OSError, ValueError, AttributeError):
            return None
        return StoredAdapter(owner, name, path, rank, version, weights.stat().st_size)

    def owned(self, owner: str) -> list[StoredAdapter]:
        folder = self.root / owner_id(owner)
        if not folder.is_dir():
            return []
        found = (self.get(owner, p.name) for p in sorted(folder.iterdir()))
        return [a for a in found if a is not None]

    def usage(self, owner: str) -> tuple[int, int]:
        """(adapters, bytes of weights) the owner has stored."""
        owned = self.owned(owner)
        return len(owned), sum(a.size for a in owned)

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
