"""Load a model (and a LoRA adapter on top of it) with mlx-lm, translating failures into the
contract's typed errors with one sentence a person can act on.

    FileNotFoundError, no config.json        → ModelError  "no model at PATH ..."
    hub unreachable                          → Unavailable "cannot reach the Hugging Face hub ..."
    not on disk in local-only mode (offline) → ModelError  "... pull it first with ..."
    unknown hub id                           → ModelError  "no model called ID on the hub ..."
    "Model type X not supported."            → ModelError  "architecture X is not supported ..."
    a damaged .safetensors file              → ModelError  "the weights in PATH are damaged ..."
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from router.protocol import ModelError, Unavailable

__all__ = [
    "Loaded",
    "find_model",
    "folder_name_for",
    "load_adapter_model",
    "load_main",
    "looks_like_hub_id",
    "resolve_folder",
]

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


def looks_like_hub_id(spec: str) -> bool:
    """"org/name" (and not an existing or absolute path)."""
    return bool(_HUB_ID.match(spec)) and not Path(spec).exists()


@dataclass(slots=True)
class Loaded:
    """A model in memory with what the engine needs to know about it."""

    model: Any
    tokenizer: Any
    config: dict[str, Any]
    path: Path


def folder_name_for(hub_id: str) -> str:
    """The folder under the models directory that holds a pulled hub model."""
    return hub_id.replace("/", "--")


def find_model(spec: str | Path, models_dir: Path | None = None) -> Path | None:
    """The folder `spec` names on this machine, without the network, or None: a folder; a
    model `tandem models pull` put in `models_dir` (ORG/NAME as ORG--NAME, or a folder name
    there); a hub id already in the Hugging Face cache."""
    text = str(spec)
    path = Path(text).expanduser()
    if path.is_dir():
        return path
    if models_dir is not None and text:
        for candidate in (models_dir / folder_name_for(text), models_dir / text):
            if (candidate / "config.json").exists():
                return candidate
    return _cached_snapshot(text) if looks_like_hub_id(text) else None


def resolve_folder(
    spec: str | Path, models_dir: Path | None = None, *, offline: bool = False
) -> Path:
    """A local model folder for `spec`: `find_model`'s, or a hub id downloaded now. `offline`
    (local-only mode: no byte leaves the machine): never download; a model not on disk is a
    ModelError saying how to pull it first."""
    text = str(spec)
    path = find_model(spec, models_dir)
    if path is not None:
        if not (path / "config.json").exists():
            raise ModelError(
                f"{path} is not a model folder (no config.json); pass a folder in the Hugging "
                "Face layout or a hub id such as mlx-community/Qwen3-0.6B-4bit"
            )
        return path
    if not looks_like_hub_id(text):
        raise ModelError(
            f"no model at {Path(text).expanduser()}: pass an existing model folder or a hub id "
            "(see `tandem models list`)"
        )
    if offline:
        raise ModelError(
            f"{text} is not on this machine, and local-only mode fetches nothing from the "
            f"internet; pull it first with `tandem models pull {text}` (or leave local-only "
            "mode for that one download)"
        )
    return _snapshot(text)


def _cached_snapshot(repo: str) -> Path | None:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo, local_files_only=True))
    except (LocalEntryNotFoundError, FileNotFoundError, OSError):
        return None


def _snapshot(repo: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo))
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        raise ModelError(
            f"no model called {repo} on the Hugging Face hub (or it needs a login); "
            "check the id or pass a local folder"
        ) from exc
    except Exception as exc:  # connection errors come in many classes
        raise Unavailable(
            f"cannot reach the Hugging Face hub to fetch {repo}; pull it when online with "
            "`tandem models pull ID`, or pass a local model folder"
        ) from exc


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path / 'config.json'}: {exc}") from exc
    if not isinstance(config, dict):
        raise ModelError(f"{path / 'config.json'} is not a JSON object")
    return config


def load_main(spec: str | Path) -> Loaded:
    """Load model and tokenizer from a folder or hub id; raise ModelError/Unavailable."""
    path = resolve_folder(spec)
    config = _read_config(path)
    from mlx_lm.utils import load_model, load_tokenizer

    try:
        model, config = load_model(path)
    except ValueError as exc:
        if "not supported" in str(exc):
            kind = config.get("model_type", "?")
            raise ModelError(
                f"the architecture of {path.name} ({kind}) is not supported by this mlx-lm; "
                "pick another model or upgrade mlx-lm"
            ) from exc
        raise _weights_error(path, exc) from exc
    except FileNotFoundError as exc:
        raise ModelError(
            f"no weights (*.safetensors) in {path}; pull the model again"
        ) from exc
    except Exception as exc:
        raise _weights_error(path, exc) from exc
    try:
        tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    except Exception as exc:
        raise ModelError(f"cannot load the tokenizer of {path.name}: {exc}") from exc
    return Loaded(model, tokenizer, config, path)


def _weights_error(path: Path, exc: BaseException) -> ModelError:
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return ModelError(
        f"the weights in {path} are damaged or do not match the model ({first}); "
        "pull or convert the model again"
    )


def load_adapter_model(base: Loaded, adapter_dir: Path) -> Any:
    """A second model object that shares the base model's weights, with a LoRA adapter on top.

    Sharing matters on a laptop: the base weights are in memory once, whatever the number of
    adapters. mlx arrays are immutable, so sharing them between the two modules is safe.
    """
    from mlx_lm.utils import load_adapters, load_model

    if not (adapter_dir / "adapter_config.json").exists():
        raise ModelError(
            f"adapter folder {adapter_dir} has no adapter_config.json; train or import it again"
        )
    try:
        model, _ = load_model(base.path, lazy=True)
        model.update(base.model.parameters())
        load_adapters(model, str(adapter_dir))
        model.eval()
    except Exception as exc:
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = " ".join(lines[:2]) if lines else type(exc).__name__
        raise ModelError(
            f"adapter {adapter_dir.name} does not fit {base.path.name} ({detail})"
        ) from exc
    return model
