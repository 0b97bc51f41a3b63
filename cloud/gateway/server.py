"""Run the gateway with uvicorn: plain HTTP, or HTTPS when given a certificate and key."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import uvicorn

from cloud.gateway.app import GatewayConfig, create_app

__all__ = ["ServeOptions", "configure_logging", "serve_gateway"]


@dataclass(frozen=True, slots=True)
class ServeOptions:
    host: str = "0.0.0.0"
    port: int = 8000
    tls_cert: Path | None = None
    tls_key: Path | None = None
    log_file: Path | None = None


def configure_logging(log_file: Path | None) -> None:
    """One line per request to stderr (and a file): ids, counts, timings, never text."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s")
    for handler in handlers:
        handler.setFormatter(formatter)
    for name in ("tandem.gateway", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = handlers
        logger.setLevel(logging.INFO)
        logger.propagate = False


def build_server(config: GatewayConfig, options: ServeOptions) -> uvicorn.Server:
    """A uvicorn server for the gateway (call .run(), or set .should_exit to stop it)."""
    if (options.tls_cert is None) != (options.tls_key is None):
        raise ValueError("HTTPS needs both --tls-cert and --tls-key")
    uv_config = uvicorn.Config(
        create_app(config),
        host=options.host,
        port=options.port,
        ssl_certfile=str(options.tls_cert) if options.tls_cert else None,
        ssl_keyfile=str(options.tls_key) if options.tls_key else None,
        # uvicorn's access log would add a second line per request; ours has what matters.
        access_log=False,
        log_config=None,
        timeout_graceful_shutdown=5,
    )
    return uvicorn.Server(uv_config)


def serve_gateway(
    config: GatewayConfig, options: ServeOptions, *, on_started: Callable[[], None] | None = None
) -> None:
    """Serve until SIGINT/SIGTERM (uvicorn handles both and drains open streams briefly)."""
    configure_logging(options.log_file)
    server = build_server(config, options)
    if on_started is not None:
        on_started()
    server.run()
