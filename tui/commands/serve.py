"""`tandem serve`: the device-plus-cloud pair as an OpenAI-compatible endpoint on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import os
import socket
import sys
from typing import TYPE_CHECKING

from tui.config import MODES, ConfigError, load_config, with_overrides

if TYPE_CHECKING:
    from tui.compose import Composition

__all__ = ["build_parser", "main"]

DEFAULT_PORT = 8642


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem serve",
        description=(
            "Serve the hybrid backend (this device plus your cloud, routed per request) as an "
            "OpenAI-compatible API on this machine only: POST /v1/chat/completions (streaming "
            "and not) and GET /v1/models. Use model 'tandem' to let the router decide, "
            "'tandem-local' or 'tandem-cloud' to pin a side. Every response carries the route "
            "(where it ran and why) in the x-tandem-route header and as 'tandem_route' in the "
            "body or the last streamed chunk. Stop with Ctrl-C."
        ),
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="loopback address to bind (default 127.0.0.1); other addresses are refused, "
        "because the endpoint has no authentication",
    )
    parser.add_argument(
        "--model",
        default=os.environ.get("TANDEM_MODEL"),
        help="local model folder or hub id (default: $TANDEM_MODEL, then `model` in the config)",
    )
    parser.add_argument(
        "--draft-model", default=None, help="draft model for speculative decoding on the device"
    )
    parser.add_argument(
        "--mode", choices=MODES, default=None, help="routing mode (default: `mode` in the config)"
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="answer length when a request does not say (default: `max_tokens` in the config)",
    )
    return parser


def _check_host(host: str) -> str | None:
    if host == "localhost":
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return (
        f"tandem serve: {host} is not a loopback address. The endpoint has no authentication, "
        "so it only listens on this machine (127.0.0.1 or ::1)."
    )


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    problem = _check_host(args.host)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    try:
        config = with_overrides(load_config(), mode=args.mode, max_tokens=args.max_tokens)
    except ConfigError as exc:
        print(f"tandem serve: {exc}", file=sys.stderr)
        return 2
    if not _port_free(args.host, args.port):
        print(
            f"tandem serve: port {args.port} on {args.host} is in use. "
            "Stop what uses it or pass --port N.",
            file=sys.stderr,
        )
        return 1
    from tui.compose import ComposeError, build_composition

    try:
        composition = build_composition(config, model=args.model, draft_model=args.draft_model)
    except (ComposeError, ValueError) as exc:
        print(f"tandem serve: {exc}", file=sys.stderr)
        return 2
    for note in composition.notes:
        print(note, file=sys.stderr)
    return asyncio.run(_serve(composition, args.host, args.port, config.max_tokens))


async def _serve(comp: Composition, host: str, port: int, max_tokens: int) -> int:
    import uvicorn

    from router.hybrid import HybridBackend
    from router.protocol import BackendError
    from router.serve import create_app

    if not isinstance(comp.backend, HybridBackend):
        print("tandem serve: the router is not installed.", file=sys.stderr)
        return 1

    try:
        await comp.start()
    except BackendError as exc:
        print(f"tandem serve: the local model did not load: {exc}", file=sys.stderr)
        await comp.aclose()
        return 1
    app = create_app(comp.backend, default_max_tokens=max_tokens)
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    shown = f"[{host}]" if ":" in host else host
    print(f"tandem serve: listening on http://{shown}:{port}/v1 (Ctrl-C stops)", flush=True)
    try:
        await server.serve()
    finally:
        await comp.aclose()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
