"""`tandem cloud serve`, once configured: start what it runs and stop it all on the way out.

One vLLM (on its private socket) and the gateway, or N replicas and vllm-router
(cloud/supervisor.py) and the gateway; `print_deployment` is what --dry-run shows.
"""

from __future__ import annotations

import argparse
import dataclasses
import secrets
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import uvicorn

    from cloud.gateway.app import GatewayConfig
    from cloud.launch import VllmCommand, VllmProcess
    from cloud.replicas import Deployment

__all__ = [
    "base_model_dir",
    "print_deployment",
    "run_replicated",
    "run_single",
    "with_upstream_key",
]


def run_single(
    args: argparse.Namespace, command: VllmCommand, config: GatewayConfig, scheme: str
) -> int:
    """Start vLLM (unless --upstream), then the gateway; stop both on the way out."""
    from cloud.gateway.server import ServeOptions, build_server
    from cloud.launch import LaunchError, VllmProcess

    vllm: VllmProcess | None = None
    try:
        if args.upstream is None:
            secret = secrets.token_urlsafe(32)  # only the gateway may call vLLM's /v1 routes
            config = with_upstream_key(config, secret)
            log = args.vllm_log.open("ab") if args.vllm_log else None
            vllm = VllmProcess(command, log=log, secret_env={"VLLM_API_KEY": secret})
            where = f"the Unix socket {command.uds}" if command.uds else command.url
            print(f"tandem cloud serve: starting vLLM on {where} ...", file=sys.stderr)
            vllm.start()
            assert vllm.process is not None
            print(f"tandem cloud serve: vLLM pid {vllm.process.pid}", file=sys.stderr)
            try:
                vllm.wait_healthy()
            except LaunchError as exc:
                print(f"tandem cloud serve: {exc}", file=sys.stderr)
                return 1
        if config.base_model_dir is None:
            # A hub id is in the local cache only once vLLM has downloaded it.
            config = dataclasses.replace(config, base_model_dir=base_model_dir(args.model))
        options = ServeOptions(
            args.host, args.port, args.tls_cert, args.tls_key, args.log_file,
            limit_concurrency=args.limit_concurrency, header_timeout_s=args.header_timeout,
        )  # fmt: skip
        server = build_server(config, options)
        vllm_died = threading.Event()
        if vllm is not None:
            _watch(vllm, server, vllm_died)
        print(f"tandem cloud serve: gateway on {scheme}://{args.host}:{args.port}", file=sys.stderr)
        server.run()
        if vllm_died.is_set():
            print("tandem cloud serve: vLLM exited unexpectedly; the gateway stopped too "
                  "(see vLLM's log)", file=sys.stderr)  # fmt: skip
            return 1
        return 0
    finally:
        if vllm is not None and vllm.poll() is None:
            print("tandem cloud serve: stopping vLLM", file=sys.stderr)
            vllm.stop()


def base_model_dir(model: str) -> Path | None:
    """The folder holding the base model's config.json (adapter uploads are checked against
    it): the model folder itself, or a hub id's snapshot in the Hugging Face cache."""
    if (Path(model) / "config.json").is_file():
        return Path(model)
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(model, "config.json")
    return Path(found).parent if isinstance(found, str) else None


def with_upstream_key(config: GatewayConfig, secret: str) -> GatewayConfig:
    return dataclasses.replace(config, upstream_api_key=secret)


def _watch(vllm: VllmProcess, server: uvicorn.Server, died: threading.Event) -> None:
    """Stop the gateway if vLLM exits: a gateway without an engine would only answer 503."""
    process = vllm.process
    assert process is not None

    def run() -> None:
        process.wait()
        if not server.should_exit:
            died.set()
            server.should_exit = True

    threading.Thread(target=run, name="vllm-watch", daemon=True).start()


def print_deployment(deployment: Deployment, args: argparse.Namespace, scheme: str) -> None:
    """Every process --dry-run would start, in order, secrets masked."""
    many = len(deployment.replicas) > 1
    if any(uses_ray(r.argv) for r in deployment.replicas):
        print("# Ray first (README: \"One model across nodes\"): on the head node")
        print("ray start --head --port=6379")
        print("# on every other node (the head's address; the same Python environment and model)")
        print("ray start --address=HEAD_IP:6379")
        print("# then, on the head node:")
    print("# vLLM (loopback only; VLLM_API_KEY is a fresh random secret per start)")
    for index, replica in enumerate(deployment.replicas):
        if many:
            print(f"# replica {index}")
        print(replica.render())
    if deployment.router is not None:
        print("# vllm-router (loopback; passes the gateway's Authorization on to the replicas)")
        print(deployment.router.render())
    target = deployment.replicas[0].uds or deployment.upstream_url
    print(f"# gateway: {scheme}://{args.host}:{args.port} -> {target}")
    if deployment.router is not None:
        replicas = " ".join(f"--replica {url}" for url in deployment.replica_urls)
        print(f"# (the same gateway in front of these, run apart: tandem cloud serve --upstream "
              f"{deployment.upstream_url} {replicas} ...)")  # fmt: skip


def run_replicated(
    args: argparse.Namespace, deployment: Deployment, config: GatewayConfig, scheme: str
) -> int:
    """Start the replicas and vllm-router, then the gateway; stop all on the way out."""
    from cloud.gateway.server import ServeOptions, build_server
    from cloud.launch import LaunchError
    from cloud.supervisor import Supervisor

    secret = secrets.token_urlsafe(32)  # only the gateway may call the replicas' /v1 routes
    config = with_upstream_key(config, secret)
    log = args.vllm_log.open("ab") if args.vllm_log else None
    say = lambda text: print(f"tandem cloud serve: {text}", file=sys.stderr)  # noqa: E731
    supervisor = Supervisor(deployment, secret_env={"VLLM_API_KEY": secret}, log=log, say=say)
    try:
        say(f"starting {len(deployment.replicas)} vLLM replicas behind vllm-router ...")
        try:
            supervisor.start()
        except LaunchError as exc:
            say(str(exc))
            return 1
        options = ServeOptions(
            args.host, args.port, args.tls_cert, args.tls_key, args.log_file,
            limit_concurrency=args.limit_concurrency, header_timeout_s=args.header_timeout,
        )  # fmt: skip
        server = build_server(config, options)

        def stop_if_router_dies() -> None:
            supervisor.died.wait()
            server.should_exit = True

        threading.Thread(target=stop_if_router_dies, name="router-watch", daemon=True).start()
        say(f"gateway on {scheme}://{args.host}:{args.port}")
        server.run()
        if supervisor.died.is_set():
            say("vllm-router exited unexpectedly; the gateway stopped too")
            return 1
        return 0
    finally:
        say("stopping the replicas and vllm-router")
        supervisor.stop()


def uses_ray(argv: list[str]) -> bool:
    flag = "--distributed-executor-backend"
    return flag in argv and argv[argv.index(flag) + 1] == "ray"
