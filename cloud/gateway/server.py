"""Run the gateway with uvicorn: HTTPS when given a certificate and key, else plain HTTP.

Slow clients are bounded here: uvicorn's `limit_concurrency` answers 503 past a number of open
connections and tasks, and a connection has `header_timeout_s` to send its request line and
headers (uvicorn itself has no such limit: a slowloris client would hold a connection forever).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from cloud.gateway.app import GatewayConfig, create_app

__all__ = ["ServeOptions", "configure_logging", "serve_gateway"]


@dataclass(frozen=True, slots=True)
class ServeOptions:
    host: str = "0.0.0.0"
    port: int = 8000
    tls_cert: Path | None = None
    tls_key: Path | None = None
    log_file: Path | None = None
    limit_concurrency: int = 512
    """Open connections + tasks before uvicorn answers 503."""
    header_timeout_s: float = 10.0
    """How long a connection may take to send a request's headers."""
    uds: str | None = None
    """Listen on this Unix socket instead of host:port (tests, a local proxy)."""


def header_timeout_protocol(timeout_s: float) -> type[asyncio.Protocol]:
    """uvicorn's h11 protocol, closing a connection that has not sent a whole request head
    within `timeout_s` of connecting (or of starting the next request on a kept-alive one),
    and answering a request its parser refuses with the gateway's JSON error shape."""

    class HeaderTimeoutH11(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def send_400_response(self, msg: str) -> None:
            # uvicorn answers in plain text a request h11 refuses (a Content-Length that is no
            # number, no Host); every other error a client gets is OpenAI's JSON shape.
            body = json.dumps(
                {"error": {"message": msg, "type": "invalid_request_error", "code": 400}}
            ).encode()
            headers = [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ]
            for event in (
                h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
                h11.Data(data=body),
                h11.EndOfMessage(),
            ):
                self.transport.write(self.conn.send(event) or b"")
            self.transport.close()

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:
                self._arm()  # still waiting for the request line and headers
            else:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            if self._header_timer is None:
                self._header_timer = self.loop.call_later(timeout_s, self._expired)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expired(self) -> None:
            self._header_timer = None
            if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
                self.transport.close()

    return HeaderTimeoutH11


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
        uds=options.uds,
        http=header_timeout_protocol(options.header_timeout_s),
        limit_concurrency=options.limit_concurrency,
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=64 * 1024,  # a request head larger than this is refused
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
