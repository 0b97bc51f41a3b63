"""`tandem cloud`: run the self-hosted overflow service and manage its API keys.

    tandem cloud serve --model M [--profile h100|h100-tp|h100-pp-ray|cpu|FILE] [--replicas N]
    tandem cloud keys add NAME [--admin]
    tandem cloud keys list
    tandem cloud keys revoke NAME [--keep-adapters] [--adapters-dir DIR]

A server-side command: it imports neither Textual nor MLX.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cloud.gateway.keys import KeyRecord

__all__ = ["main"]

UPSTREAM_KEY_ENV = "TANDEM_UPSTREAM_API_KEY"

DESCRIPTION = """\
The cloud overflow service: vLLM's OpenAI server on loopback, behind a gateway that checks
API keys, answers 429 at once when the engine is saturated (so desktops answer locally
instead of waiting), hosts users' LoRA adapters and never logs prompt or answer text."""

SERVE_EPILOG = """\
examples:
  tandem cloud serve --model Qwen/Qwen3-8B --profile h100 --dry-run
  tandem cloud serve --model ./my-model --profile cpu --port 8000
  tandem cloud serve --model M --speculative draft:./small-model --num-speculative-tokens 4
  tandem cloud serve --model M --profile cpu --replicas 2 --dry-run
  tandem cloud serve --model M --upstream http://router:80 --replica http://vllm-0:8000 \\
      --replica http://vllm-1:8000

With --replicas N (or [replicas] in the profile), N vLLM servers run on 127.0.0.1 ports with
vllm-router in front of them (cache-aware by default) and the gateway in front of the router;
a replica that dies is restarted and rejoins once its adapters are loaded. Those replicas are
reachable on loopback TCP by local processes (README.md: "Replicas" says which routes).

Profiles are TOML files you can copy and edit (see --dry-run for what one produces).
One vLLM listens on a Unix socket in a private folder (its /tokenize, /pooling, /metrics, ...
are not guarded by its API key, so no TCP port is opened for them); only the gateway listens
on the network. Off loopback the gateway needs --tls-cert/--tls-key, or --insecure-http when
a TLS-terminating proxy in front of it carries the traffic.
Ctrl-C or SIGTERM stops the gateway and then vLLM."""


def _default_keys_file() -> Path:
    from tui.paths import paths

    return paths().cloud_dir / "keys.json"


def _default_adapters_dir() -> Path:
    from tui.paths import paths

    return paths().cloud_dir / "adapters"


def _parser() -> argparse.ArgumentParser:
    from cloud.replicas import ROUTER_POLICIES

    parser = argparse.ArgumentParser(
        prog="tandem cloud",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    serve = sub.add_parser(
        "serve",
        help="start vLLM and the gateway",
        description=DESCRIPTION,
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    serve.add_argument("--model", required=True, help="model folder or Hugging Face hub id")
    serve.add_argument(
        "--profile",
        default="h100",
        help="h100 (one GPU per replica), h100-tp (tensor parallel over one node's GPUs), "
        "h100-pp-ray (tensor parallel within, pipeline parallel across nodes on Ray), cpu, "
        "or the path of a profile TOML file (default: h100)",
    )
    serve.add_argument(
        "--served-model-name",
        default="",
        help="the name clients send as `model` (default: --model)",
    )
    serve.add_argument("--host", default="0.0.0.0", help="the gateway's address (default: 0.0.0.0)")
    serve.add_argument("--port", type=int, default=8000, help="the gateway's port (default: 8000)")
    serve.add_argument(
        "--vllm-port",
        type=int,
        default=None,
        help="put vLLM on this 127.0.0.1 port instead of its private Unix socket (then any "
        "local process can reach its unguarded /tokenize, /pooling, /metrics routes)",
    )
    serve.add_argument(
        "--speculative",
        default=None,
        metavar="METHOD",
        help="ngram, draft:PATH, eagle3:PATH, mtp or off (default: the profile's)",
    )
    serve.add_argument(
        "--num-speculative-tokens",
        type=int,
        default=None,
        metavar="K",
        help="draft tokens per step (default: the profile's)",
    )
    serve.add_argument(
        "--tensor-parallel-size",
        type=int,
        default=None,
        metavar="N",
        help="GPUs to split the model across (default: the profile's)",
    )
    serve.add_argument(
        "--max-num-seqs",
        type=int,
        default=None,
        metavar="N",
        help="concurrent sequences in vLLM (default: the profile's)",
    )
    serve.add_argument(
        "--no-lora", action="store_true", help="do not host users' adapters (frees the LoRA memory)"
    )
    serve.add_argument(
        "--reasoning-parser", default=None, metavar="NAME",
        help="vLLM's reasoning parser (e.g. qwen3); '' for none (default: the profile's, "
        "'auto': by model family)",
    )
    serve.add_argument(
        "--tool-call-parser", default=None, metavar="NAME",
        help="vLLM's tool-call parser (e.g. hermes); '' for none (default: the profile's, "
        "'auto': by model family)",
    )
    serve.add_argument(
        "--upstream",
        default=None,
        metavar="URL",
        help="front an already running vLLM or router at this URL (or unix:/path/to/socket) "
        "instead of starting one; its --api-key, if it has one, goes in the environment "
        "variable TANDEM_UPSTREAM_API_KEY",
    )
    serve.add_argument(
        "--replica",
        action="append",
        default=None,
        metavar="URL",
        help="with --upstream: a vLLM replica behind it (repeat for each); admission reads "
        "every replica's /metrics and adapters are loaded on each (default: the upstream)",
    )
    serve.add_argument(
        "--replicas",
        type=int,
        default=None,
        metavar="N",
        help="run N vLLM replicas behind vllm-router (default: the profile's [replicas] count, "
        "else 1: one vLLM on a private Unix socket)",
    )
    serve.add_argument(
        "--router-policy",
        default=None,
        choices=ROUTER_POLICIES,
        help="vllm-router's load-balancing policy with --replicas (default: the profile's, "
        "else cache_aware)",
    )
    serve.add_argument(
        "--keys-file",
        type=Path,
        default=None,
        help="hashed API keys (default: tandem's data folder)",
    )
    serve.add_argument(
        "--adapters-dir",
        type=Path,
        default=None,
        help="users' uploaded adapters (default: tandem's data folder)",
    )
    serve.add_argument(
        "--log-file", type=Path, default=None, help="also write the gateway's request log here"
    )
    serve.add_argument(
        "--vllm-log", type=Path, default=None, help="vLLM's output (default: the terminal)"
    )
    serve.add_argument("--tls-cert", type=Path, default=None, help="PEM certificate: serve HTTPS")
    serve.add_argument("--tls-key", type=Path, default=None, help="PEM private key for --tls-cert")
    serve.add_argument(
        "--insecure-http",
        action="store_true",
        help="serve plain HTTP on a non-loopback --host: only behind a TLS-terminating proxy "
        "(keys and prompts would otherwise cross the network in the clear)",
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="close a connection that has not sent its request headers within S seconds "
        "(default: 10)",
    )
    serve.add_argument(
        "--stream-write-timeout",
        type=float,
        default=15.0,
        metavar="S",
        help="end a stream whose client takes no bytes for S seconds, freeing its slot "
        "(default: 15)",
    )
    serve.add_argument(
        "--limit-concurrency",
        type=int,
        default=512,
        metavar="N",
        help="open connections and requests before the gateway answers 503 (default: 512)",
    )
    for flag, kind, text in (
        ("--max-waiting", int, "429 while every replica has more than N requests waiting"),
        ("--max-kv-cache-usage", float, "429 while every replica's KV cache is fuller than "
         "this fraction"),
        ("--max-in-flight", int, "429 while the gateway has N requests upstream per replica "
         "in rotation"),
        ("--per-key-concurrency", int, "concurrent requests per key"),
        ("--rate-per-second", float, "sustained requests per second per key"),
        ("--burst", int, "requests a key may send at once before the rate applies"),
        ("--max-queue-wait-s", float, "how long a client that is not a tandem desktop may "
         "wait for a slot before a 429 (desktops get theirs at once)"),
    ):
        serve.add_argument(flag, type=kind, default=None, help=text + " (default: the profile's)")
    serve.add_argument(
        "--max-adapter-bytes",
        type=int,
        default=64 * 2**20,
        metavar="N",
        help="largest adapter upload accepted (default: 64 MiB)",
    )
    serve.add_argument(
        "--dry-run",
        action="store_true",
        help="print every command of the deployment (replicas, router, gateway) with its "
        "environment, start nothing",
    )

    keys = sub.add_parser("keys", help="manage API keys (add prints the key once)")
    keys_file_help = "hashed API keys (default: tandem's data folder)"
    keys.add_argument("--keys-file", type=Path, default=None, help=keys_file_help)
    keys_sub = keys.add_subparsers(dest="keys_command", metavar="ACTION", required=True)
    add = keys_sub.add_parser("add", help="make a key and print it once")
    add.add_argument("name", help="who the key is for (letters, digits, '.', '_', '-')")
    add.add_argument("--admin", action="store_true", help="may read /metrics")
    keys_sub.add_parser("list", help="list key names (never the keys)")
    revoke = keys_sub.add_parser(
        "revoke",
        help="delete a key; it stops working at once, and the adapters uploaded with it are "
        "deleted (a key issued again under the same name starts with none)",
    )
    revoke.add_argument("name")
    revoke.add_argument(
        "--keep-adapters",
        action="store_true",
        help="leave its adapters on disk (no key can reach them any more)",
    )
    revoke.add_argument(
        "--adapters-dir",
        type=Path,
        default=None,
        help="where the gateway keeps users' adapters (default: as `serve`)",
    )
    # `keys add alice --keys-file F` as well as `keys --keys-file F add alice`: SUPPRESS keeps
    # the action's parser from overwriting a value given before the action with None.
    for action_parser in keys_sub.choices.values():
        action_parser.add_argument(
            "--keys-file", type=Path, default=argparse.SUPPRESS, help=keys_file_help
        )
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    if args.command == "keys":
        return _keys(args)
    return _serve(args)


def _keys(args: argparse.Namespace) -> int:
    from cloud.gateway.keys import KeyStore, KeyStoreError

    store = KeyStore(args.keys_file or _default_keys_file())
    try:
        if args.keys_command == "add":
            key = store.add(args.name, admin=args.admin)
            print(key)
            print(f"key {args.name!r} added; this is the only time it is shown", file=sys.stderr)
        elif args.keys_command == "list":
            import time

            for record in store.records():
                made = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.created))
                print(f"{record.name}\t{'admin' if record.admin else 'user'}\t{made}")
        else:
            record = store.revoke(args.name)
            print(f"key {args.name!r} revoked", file=sys.stderr)
            _forget_adapters(record, args.adapters_dir, keep=args.keep_adapters)
    except KeyStoreError as exc:
        print(f"tandem cloud keys: {exc}", file=sys.stderr)
        return 1
    return 0


def _forget_adapters(record: KeyRecord, adapters_dir: Path | None, *, keep: bool) -> None:
    """Delete (or, with `keep`, only count) the adapters a revoked key uploaded. A running
    gateway may still hold them in vLLM's memory, out of anyone's reach, until it restarts."""
    import shutil

    from cloud.gateway.adapters import owner_id

    folder = (adapters_dir or _default_adapters_dir()) / owner_id(record.owner)
    count = sum(1 for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else 0
    if not count:
        return
    if keep:
        print(f"{count} adapter(s) uploaded with it kept in {folder}", file=sys.stderr)
        return
    shutil.rmtree(folder)
    print(f"{count} adapter(s) uploaded with it deleted", file=sys.stderr)


def _serve(args: argparse.Namespace) -> int:
    from cloud.gateway.admission import AdmissionConfig
    from cloud.gateway.app import AdapterQuota, GatewayConfig
    from cloud.gateway.fields import RequestCaps
    from cloud.gateway.server import configure_logging
    from cloud.launch import LaunchError, LaunchOptions, load_profile
    from cloud.replicas import build_deployment, plan_from_profile
    from tui.commands.cloud_run import (
        base_model_dir,
        print_deployment,
        run_replicated,
        run_single,
        with_upstream_key,
    )

    def fail(message: str) -> int:
        print(f"tandem cloud serve: {message}", file=sys.stderr)
        return 1

    cleartext = args.tls_cert is None and not args.insecure_http and not _loopback(args.host)
    if cleartext and not args.dry_run:
        return fail(
            f"{args.host} is not a loopback address, and without TLS API keys and prompts "
            "would cross the network in the clear. Give --tls-cert and --tls-key, or "
            "--insecure-http if a TLS-terminating proxy in front of the gateway carries "
            "the traffic."
        )
    if args.replica and args.upstream is None:
        return fail("--replica names the replicas behind --upstream; give --upstream too")
    socket_dir: Path | None = None
    try:
        profile = load_profile(args.profile)
        plan = plan_from_profile(
            profile, replicas=args.replicas, policy=args.router_policy, base_port=args.vllm_port
        )
    except LaunchError as exc:
        return fail(str(exc))
    if args.upstream is None and args.vllm_port is None and plan.count == 1:
        socket_dir = _private_socket_dir(dry_run=args.dry_run)
    try:
        options = LaunchOptions(
            model=args.model,
            served_model_name=args.served_model_name,
            port=args.vllm_port or 8100,
            uds=str(socket_dir / "vllm.sock") if socket_dir else None,
            speculative=args.speculative,
            num_speculative_tokens=args.num_speculative_tokens,
            lora=False if args.no_lora else None,
            tensor_parallel_size=args.tensor_parallel_size,
            max_num_seqs=args.max_num_seqs,
            reasoning_parser=args.reasoning_parser,
            tool_call_parser=args.tool_call_parser,
        )
        deployment = build_deployment(options, profile, plan)
        command = deployment.replicas[0]
    except LaunchError as exc:
        return fail(str(exc))
    gw = profile.gateway
    try:
        admission = AdmissionConfig(
            **{
                name: value
                for name in ADMISSION_FIELDS
                if (value := _pick(getattr(args, name), gw.get(name.replace("_", "-")))) is not None
            }
        )
        caps = RequestCaps(
            **{
                name: int(gw[name.replace("_", "-")])
                for name in CAP_FIELDS
                if name.replace("_", "-") in gw
            }
        )
        default = AdapterQuota()
        quota = AdapterQuota(
            max_adapters=int(gw.get("adapter-quota-count", default.max_adapters)),
            max_bytes=int(gw.get("adapter-quota-mib", default.max_bytes / 2**20) * 2**20),
        )
    except (ValueError, TypeError) as exc:
        return fail(f"profile [gateway]: {exc}")
    if (args.tls_cert is None) != (args.tls_key is None):
        return fail("HTTPS needs both --tls-cert and --tls-key")
    scheme = "https" if args.tls_cert else "http"

    if args.dry_run:
        print_deployment(deployment, args, scheme)
        if cleartext:
            print("# (refused as it stands: a non-loopback --host needs --tls-cert/--tls-key "
                  "or --insecure-http)")  # fmt: skip
        return 0

    keys_file = args.keys_file or _default_keys_file()
    upstream_uds = command.uds if args.upstream is None else None
    upstream_url = (args.upstream or deployment.upstream_url).rstrip("/")
    replicated = args.upstream is None and deployment.router is not None
    replica_urls = tuple(u.rstrip("/") for u in (args.replica or ()))
    if replicated:
        replica_urls = deployment.replica_urls
    if upstream_url.startswith("unix:"):
        upstream_uds, upstream_url = upstream_url.removeprefix("unix:"), "http://localhost"
    config = GatewayConfig(
        upstream_url=upstream_url,
        upstream_uds=upstream_uds,
        replica_urls=replica_urls,
        router_admin_url=deployment.upstream_url if replicated else None,
        caps=caps,
        adapter_quota=quota,
        stream_write_timeout_s=args.stream_write_timeout,
        served_model=command.served_model,
        keys_file=keys_file,
        adapters_dir=args.adapters_dir or _default_adapters_dir(),
        base_model_dir=base_model_dir(args.model),
        lora_enabled=command.lora_enabled,
        max_lora_rank=command.max_lora_rank,
        admission=admission,
        max_adapter_bytes=args.max_adapter_bytes,
    )
    if args.upstream is not None and os.environ.get(UPSTREAM_KEY_ENV):
        # The key of a vLLM (or router) the operator runs: from the environment, never argv.
        config = with_upstream_key(config, os.environ[UPSTREAM_KEY_ENV])
    configure_logging(args.log_file)
    if not keys_file.exists():
        print(
            f"tandem cloud serve: no API keys yet in {keys_file}; add one with "
            "`tandem cloud keys add NAME`",
            file=sys.stderr,
        )

    # SIGTERM becomes an exception (as Ctrl-C is), so every path below stops vLLM on the way
    # out. uvicorn drains on SIGINT/SIGTERM and then re-raises the signal against this handler.
    previous = signal.signal(signal.SIGTERM, _stop_requested)
    try:
        if args.upstream is None and deployment.router is not None:
            return run_replicated(args, deployment, config, scheme)
        return run_single(args, command, config, scheme)
    except _StopRequested:
        return 0
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        if socket_dir is not None:
            import shutil

            shutil.rmtree(socket_dir, ignore_errors=True)


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _private_socket_dir(*, dry_run: bool) -> Path:
    """A folder only this user can enter, for vLLM's socket (short: a socket path has a limit
    of about 100 bytes)."""
    import tempfile

    if dry_run:
        return Path(tempfile.gettempdir()) / "tandem-vllm-XXXXXX"
    return Path(tempfile.mkdtemp(prefix="tandem-vllm-"))  # mode 0700


CAP_FIELDS = (
    "max_n",
    "max_tokens_cap",
    "max_messages",
    "max_stop",
    "max_tools",
    "max_logprobs",
)


class _StopRequested(Exception):
    """SIGTERM arrived: shut down cleanly."""


def _stop_requested(signum: int, frame: object) -> None:
    raise _StopRequested


ADMISSION_FIELDS = (
    "max_waiting",
    "max_kv_cache_usage",
    "max_in_flight",
    "per_key_concurrency",
    "rate_per_second",
    "burst",
    "max_queue_wait_s",
)


def _pick(flag: Any, profile_value: Any) -> Any:
    return flag if flag is not None else profile_value

