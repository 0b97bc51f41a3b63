"""Write an adapter in the PEFT layout that vLLM (and Hugging Face PEFT) loads.

mlx-lm stores ``lora_a`` as (in, r) and ``lora_b`` as (r, out) and computes
``y + scale · (x @ a) @ b``; PEFT stores ``lora_A.weight`` as (r, in) and ``lora_B.weight`` as
(out, r) and computes ``y + (alpha / r) · B(A(x))``. So ``lora_A = a.T``, ``lora_B = b.T`` and
``lora_alpha = scale · r``. Keys are ``base_model.model.<module path>.lora_A.weight``, where the
module path is the same in mlx-lm's model classes and in transformers' for the architectures
mlx-lm and vLLM share (``model.layers.N.self_attn.q_proj``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, cast

from local.finetune.errors import ExportRefused, FinetuneError
from local.finetune.registry import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    AdapterRegistry,
    write_atomically,
)

__all__ = ["PEFT_CONFIG", "PEFT_WEIGHTS", "PeftExport", "export_peft", "public_base_model"]

PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True, slots=True)
class PeftExport:
    folder: Path
    rank: int
    alpha: float
    target_modules: tuple[str, ...]
    tensors: int


def public_base_model(base: str) -> str:
    """The base model as a name that says nothing about this machine: a hub id stays; a local
    folder becomes the hub id it was pulled as ("org--name" → "org/name", a hub-cache snapshot
    → its repo), else just the folder's name. The exported config travels to the cloud."""
    text = base.strip().replace("\\", "/")  # a Windows path reads the same
    looks_local = text.startswith(("/", ".", "~")) or text[1:3] == ":/" or text.count("/") > 1
    if not looks_local and not (text.count("/") == 1 and Path(text).exists()):
        return text  # a hub id such as mlx-community/Qwen3-0.6B-4bit, or a bare name
    parts = PurePosixPath(text).parts
    for part in reversed(parts):
        if part.startswith("models--"):  # ~/.cache/huggingface/hub/models--org--name/...
            return part[len("models--") :].replace("--", "/", 1)
    leaf = parts[-1] if parts else text
    return leaf.replace("--", "/", 1) if "--" in leaf else leaf


def export_peft(registry: AdapterRegistry, name: str, out: Path) -> PeftExport:
    """Write adapter `name` to folder `out` (adapter_config.json + adapter_model.safetensors).

    Raises ExportRefused for DoRA and full fine-tunes, which vLLM does not load as adapters.
    """
    import mlx.core as mx

    record = registry.get(name)
    folder = registry.folder(name)
    if record.kind == "dora":
        raise ExportRefused(
            f"adapter {name!r} is DoRA, which vLLM does not load; train it again with "
            "--type lora to use it in the cloud"
        )
    if record.kind != "lora":
        raise ExportRefused(
            f"adapter {name!r} is a {record.kind} fine-tune (new weights for whole layers), "
            "not a LoRA adapter; vLLM loads only LoRA adapters, so train with --type lora"
        )
    if record.status == "training" or not (folder / ADAPTER_WEIGHTS).exists():
        raise FinetuneError(f"adapter {name!r} has no finished weights yet")
    config = json.loads((folder / ADAPTER_CONFIG).read_text())
    lora = config["lora_parameters"]
    rank, scale = int(lora["rank"]), float(lora["scale"])

    weights = cast(dict[str, Any], mx.load(str(folder / ADAPTER_WEIGHTS)))
    tensors: dict[str, mx.array] = {}
    modules: set[str] = set()
    for key, value in weights.items():
        path, _, leaf = key.rpartition(".")
        if leaf == "lora_a":
            tensors[f"base_model.model.{path}.lora_A.weight"] = mx.contiguous(value.T)
        elif leaf == "lora_b":
            tensors[f"base_model.model.{path}.lora_B.weight"] = mx.contiguous(value.T)
        else:
            raise ExportRefused(f"adapter {name!r} holds {key}, which has no PEFT equivalent")
        if path.rpartition(".")[2] in ("embed_tokens", "lm_head"):
            raise ExportRefused(f"adapter {name!r} adapts {path}; vLLM takes only linear layers")
        modules.add(path.rpartition(".")[2])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    # Weights and config each whole or not at all: an export over an earlier one that is
    # killed half-way leaves the earlier files, never a torn one that vLLM would refuse.
    scratch = out / f".{PEFT_WEIGHTS}.tmp.safetensors"
    mx.save_safetensors(str(scratch), tensors, metadata={"format": "pt"})
    scratch.replace(out / PEFT_WEIGHTS)
    peft = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": public_base_model(record.base_model),
        "r": rank,
        "lora_alpha": scale * rank,
        "lora_dropout": 0.0,
        "target_modules": sorted(modules),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_dora": False,
        "use_rslora": False,
        "modules_to_save": None,
        "inference_mode": True,
    }
    write_atomically(out / PEFT_CONFIG, json.dumps(peft, indent=2))
    return PeftExport(out, rank, scale * rank, tuple(sorted(modules)), len(tensors))
