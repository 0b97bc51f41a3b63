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
    from router.serve_guard import GuardConfig
    from tui.compose import Composition

__all__ = ["build_parser", "main"]

DEFAULT_PORT = 8642
KEY_ENV = "TANDEM_SERVE_API_KEY"
KEYRING_SERVICE, KEYRING_USER = "tandem", "serve-api-key"
SHUTDOWN_LIMIT_S = 4.5
"""SIGTERM/Ctrl-C ends the process within this long, whatever a request or the engine does."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem serve",
        description=(
            "Serve the hybrid backend (this device plus your cloud, routed per request) as an "
            "OpenAI-compatible API on this machine only: POST /v1/chat/completions (streaming "
            "and not) and GET /v1/models, and Anthropic's Messages API: POST /v1/messages "
            "(base URL http://127.0.0.1:PORT; key as x-api-key or Bearer). Use model "
            "'tandem' to let the router decide, "
            "'tandem-local' or 'tandem-cloud' to pin a side. Every response carries the route "
            "(where it ran and why) in the x-tandem-route header and as 'tandem_route' in the "
            "body or the last streamed chunk. Web pages cannot call it: only requests addressed "
            "to localhost/127.0.0.1/[::1] are served, a request with a foreign Origin is "
            "refused, and bodies must be application/json (at most 8 MiB). Every field is "
            "checked; a bad one is a 400 with an OpenAI-style error (Anthropic-style on "
            "/v1/messages). Stop with Ctrl-C or "
            "SIGTERM (it exits within 5 s whatever is running)."
        ),
    )
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})"
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="loopback address to bind (default 127.0.0.1); other addresses are refused: the "
        "endpoint is for this machine (its key, --api-key, is optional)",
    )
    parser.add_argument(
        "--allow-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="let a web page from this origin (e.g. http://localhost:3000, your own web tool) "
        "call the endpoint, with CORS headers for it; repeat for several (default: none)",
    )
    parser.add_argument(
        "--api-key",
        action="store_true",
        help=f"require a bearer key: ${KEY_ENV} if set, else the key stored in the OS keyring "
        "(made and printed once on first use); clients send it as their OpenAI or Anthropic "
        "API key",
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
        f"tandem serve: {host} is not a loopback address. The endpoint spends your device and "
        "your cloud key, so it only listens on this machine (127.0.0.1 or ::1)."
    )


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _check_origins(origins: list[str]) -> str | None:
    from urllib.parse import urlsplit

    for origin in origins:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path.strip("/"):
            return (
                f"tandem serve: --allow-origin {origin!r} is not an origin; "
                "give scheme://host[:port], e.g. http://localhost:3000"
            )
    return None


def _serve_key() -> tuple[str | None, str | None]:
    """(key, problem): from $TANDEM_SERVE_API_KEY, else the keyring (made on first use)."""
    import secrets

    key = os.environ.get(KEY_ENV)
    if key:
        return key, None
    try:
        import keyring
        from keyring.backends import fail
        from keyring.errors import KeyringError

        if isinstance(keyring.get_keyring(), fail.Keyring):
            raise KeyringError("no keyring")
        key = keyring.get_password(KEYRING_SERVICE, KEYRING_USER)
        if not key:
            key = "tds_" + secrets.token_urlsafe(32)
            keyring.set_password(KEYRING_SERVICE, KEYRING_USER, key)
            # The one time it is shown: to the terminal that asked for it, never to a log file.
            print(f"tandem serve: made an API key and stored it in the OS keyring: {key}",
                  file=sys.stderr)  # fmt: skip
        return key, None
    except Exception:  # keyring's backends raise their own kinds
        return None, (
            f"tandem serve: --api-key needs a key: set {KEY_ENV}, or use a machine with an "
            "OS keyring (none is available here)"
        )


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    problem = _check_host(args.host) or _check_origins(args.allow_origin)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    api_key: str | None = None
    if args.api_key:
        api_key, problem = _serve_key()
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
    from router.serve_guard import GuardConfig

    guard = GuardConfig(allowed_origins=tuple(args.allow_origin), api_key=api_key)
    return asyncio.run(_serve(composition, args.host, args.port, config.max_tokens, guard))


def _arm_exit_watchdog() -> None:
    """Once shutdown starts, the process ends within SHUTDOWN_LIMIT_S even if a request, the
    engine thread or the interpreter's executor shutdown would wait forever."""
    import threading

    timer = threading.Timer(SHUTDOWN_LIMIT_S, os._exit, args=(0,))
    timer.daemon = True
    timer.start()


async def _serve(
    comp: Composition, host: str, port: int, max_tokens: int, guard: GuardConfig
) -> int:
    import uvicorn

    from router.protocol import BackendError
    from router.serve import create_app

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: object) -> None:
            if not self.should_exit:
                _arm_exit_watchdog()
            super().handle_exit(sig, frame)  # type: ignore[arg-type]

    try:
        await comp.start()
    except BackendError as exc:
        print(f"tandem serve: the local model did not load: {exc}", file=sys.stderr)
        await comp.aclose()
        return 1
    app = create_app(comp.backend, default_max_tokens=max_tokens, guard_config=guard)
    server = Server(
        uvicorn.Config(
            app, host=host, port=port, log_level="warning",
            # Open answers get this long to finish after Ctrl-C/SIGTERM; then they are cut.
            timeout_graceful_shutdown=2, timeout_keep_alive=5,
        )
    )  # fmt: skip
    shown = f"[{host}]" if ":" in host else host
    print(f"tandem serve: listening on http://{shown}:{port}/v1 (Ctrl-C stops)", flush=True)
    try:
        await server.serve()
    finally:
        try:
            await asyncio.wait_for(comp.aclose(), timeout=1.5)
        except TimeoutError:
            print("tandem serve: the engine did not stop in time; exiting anyway", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
