"""`tandem adapters`: the fine-tuned adapters kept on this machine.

    tandem adapters list
    tandem adapters show NAME
    tandem adapters delete NAME
    tandem adapters export NAME --peft DIR
    tandem adapters push NAME [--url URL] [--yes]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from local.finetune.errors import FinetuneError
from local.finetune.registry import AdapterRecord, AdapterRegistry

__all__ = ["main"]

DESCRIPTION = """\
Adapters made by `tandem finetune train` live in tandem's data folder, each with the base
model it was trained on (and a hash of that model's weights: an adapter is never applied to
other weights), the data's hash, the settings and the results."""

EPILOG = """\
examples:
  tandem adapters list
  tandem adapters show support
  tandem adapters export support --peft ./support-peft   # the layout vLLM and PEFT load
  tandem adapters push support                           # upload to your tandem cloud"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem adapters", description=DESCRIPTION, epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    sub.add_parser("list", help="list the adapters", description="List the adapters.")
    show = sub.add_parser("show", help="everything recorded about one adapter",
                          description="Everything recorded about one adapter.")
    show.add_argument("name")
    show.add_argument("--json", action="store_true", help="print the record as JSON")
    delete = sub.add_parser("delete", help="delete an adapter", description="Delete an adapter.")
    delete.add_argument("name")
    export = sub.add_parser(
        "export", help="write the PEFT layout that vLLM loads",
        description="Write an adapter as adapter_config.json + adapter_model.safetensors (the "
        "PEFT layout vLLM and Hugging Face PEFT load). DoRA and full fine-tunes are refused: "
        "vLLM does not load them as adapters.",
    )
    export.add_argument("name")
    export.add_argument("--peft", required=True, type=Path, help="folder to write")
    push = sub.add_parser(
        "push", help="upload to the tandem cloud gateway",
        description="Export an adapter and upload it to the cloud gateway (the cloud_url "
        "setting, or --url), under the same name, so cloud answers can use the same fine-tune. "
        "It first says what leaves this machine (the adapter's weights, learnt from your own "
        "training data, and its config with no local paths) and asks; --yes skips the "
        "question. The API key comes from the keyring or TANDEM_CLOUD_API_KEY.",
    )
    push.add_argument("name")
    push.add_argument("--url", help="gateway URL (default: the cloud_url setting)")
    push.add_argument("--as", dest="remote_name", help="name in the cloud (default: NAME)")
    push.add_argument(
        "--yes", action="store_true", help="upload without asking (it says what it sends first)"
    )
    return parser


def _kind(record: AdapterRecord) -> str:
    return "qlora" if record.kind == "lora" and record.quantized_base else record.kind


def _list(registry: AdapterRegistry) -> int:
    records = registry.list()
    if not records:
        print("no adapters yet; make one with `tandem finetune train`")
        return 0
    width = max(len(r.name) for r in records)
    print(f"{'name'.ljust(width)}  {'kind':6} {'status':12} {'steps':>11}  {'val_loss':>8}  base")
    for r in records:
        val = r.metrics.get("val_loss")
        steps = f"{r.step}/{r.iters}"
        print(
            f"{r.name.ljust(width)}  {_kind(r):6} {r.status:12} {steps:>11}  "
            f"{(f'{val:.3f}' if val is not None else '-'):>8}  {r.base_model}"
        )
    return 0


def _show(registry: AdapterRegistry, name: str, as_json: bool) -> int:
    record = registry.get(name)
    if as_json:
        print(json.dumps(asdict(record), indent=2, sort_keys=True))
        return 0
    print(f"{record.name}  ({_kind(record)}, {record.status}, step {record.step}/{record.iters})")
    print(f"  folder        {registry.folder(name)}")
    print(f"  base model    {record.base_model}")
    print(f"  base weights  sha256 {record.base_hash[:16]}…")
    print(f"  data          {record.data_path} (sha256 {record.data_hash[:16]}…)")
    print(f"  created       {record.created}   updated {record.updated}")
    print("  settings      " + ", ".join(f"{k}={v}" for k, v in
                                          sorted(record.hyperparameters.items())))
    for key, value in sorted(record.metrics.items()):
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        print(f"  {key:14}{shown}")
    return 0


def _confirm(record: AdapterRecord, folder: Path, base_url: str, remote: str, yes: bool) -> bool:
    """Say what leaves this machine, then ask (unless --yes)."""
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    config = json.loads((folder / "adapter_config.json").read_text())
    data = Path(record.data_path).name if record.data_path else "your data"
    print(
        f"This uploads adapter {record.name!r} to {base_url} as {remote!r}:\n"
        f"  adapter_model.safetensors and adapter_config.json ({size / 1e6:.1f} MB): LoRA "
        f"weights (rank {config.get('r')}) trained on {data}. Weights learnt from your own "
        "data can repeat parts of it.\n"
        f"  base model: {config.get('base_model_name_or_path')} (no local paths are sent)"
    )
    if yes:
        return True
    if not sys.stdin.isatty():
        print("tandem adapters: not uploaded; pass --yes to upload without a question",
              file=sys.stderr)
        return False
    answer = input("Upload it? [y/N] ").strip().lower()
    if answer not in ("y", "yes"):
        print("not uploaded")
        return False
    return True


def _push(
    registry: AdapterRegistry, name: str, url: str | None, remote: str | None, yes: bool = False
) -> int:
    from cloud.adapters_client import upload_adapter
    from cloud.trust import TrustError
    from local.finetune.export import export_peft
    from router.protocol import BackendError
    from tui.config import load_config
    from tui.secrets import load_api_key

    config = load_config()
    base_url = url or config.cloud_url
    if not base_url:
        print("tandem adapters: no cloud configured; set cloud_url in the settings or pass --url",
              file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="tandem-peft-") as tmp:
        export_peft(registry, name, Path(tmp))
        if not _confirm(registry.get(name), Path(tmp), base_url, remote or name, yes):
            return 1
        try:
            uploaded = upload_adapter(
                base_url, load_api_key(), remote or name, Path(tmp),
                ca_file=config.cloud_ca_file or None,
            )  # fmt: skip
        except (BackendError, TrustError) as exc:
            print(f"tandem adapters: {exc}", file=sys.stderr)
            return 1
    print(f"pushed {name} to {base_url} as {uploaded.name!r} (rank {uploaded.rank}); cloud "
          "answers in conversations using this adapter now use it too")
    return 0


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    from tui.paths import paths

    registry = AdapterRegistry(paths().adapters_dir)
    try:
        if args.command == "list":
            return _list(registry)
        if args.command == "show":
            return _show(registry, args.name, args.json)
        if args.command == "delete":
            registry.delete(args.name)
            print(f"deleted {args.name}")
            return 0
        if args.command == "export":
            from local.finetune.export import export_peft

            done = export_peft(registry, args.name, args.peft)
            print(f"wrote {done.folder} (PEFT LoRA, r={done.rank}, lora_alpha={done.alpha:g}, "
                  f"modules {', '.join(done.target_modules)})")
            return 0
        return _push(registry, args.name, args.url, args.remote_name, args.yes)
    except FinetuneError as exc:
        print(f"tandem adapters: {exc}", file=sys.stderr)
        return 1
