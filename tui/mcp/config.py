"""The MCP servers a user declares in config.toml, checked when the file is read.

    [mcp.servers.weather]
    command = "uvx"                      # a stdio server: the command and its arguments...
    args = ["mcp-server-weather"]
    env = { UNITS = "metric" }           # ...and extra environment (not secrets: see README)
    timeout = 30                         # seconds one tool call may take (default 30)
    allow = ["get_weather"]              # tools that run without asking (default: ask)

    [mcp.servers.notes]
    url = "http://127.0.0.1:8765/mcp"    # a streamable-HTTP server
    enabled = false                      # declared, but off until turned on (F11)

No Textual and no MCP SDK here: `tandem --help`, the settings screen and the config checks
read this without starting anything.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from router.protocol import TandemError

__all__ = ["DEFAULT_TIMEOUT_S", "McpConfigError", "McpServerSpec", "parse_servers"]

DEFAULT_TIMEOUT_S = 30.0
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_KEYS = {"command", "args", "env", "url", "enabled", "timeout", "allow"}


class McpConfigError(TandemError, ValueError):
    """A `[mcp.servers.NAME]` table tandem cannot use; the message names it and the fix."""


@dataclass(frozen=True, slots=True)
class McpServerSpec:
    """One declared MCP server: a command tandem starts (stdio) or a URL (streamable HTTP)."""

    name: str
    command: str = ""
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    url: str = ""
    enabled: bool = True
    """Off: declared but not started; a conversation can still turn it on (F11)."""
    timeout_s: float = DEFAULT_TIMEOUT_S
    """How long one tool call may take before the model is told it timed out."""
    allow: tuple[str, ...] = ()
    """Tool names (as the server names them) that run without asking."""

    @property
    def transport(self) -> str:
        return "http" if self.url else "stdio"

    @property
    def remote(self) -> bool:
        """A streamable-HTTP server on another machine: what its tools are sent leaves this
        one (a local-only conversation does not offer its tools)."""
        if not self.url:
            return False
        host = (urlsplit(self.url).hostname or "").lower()
        if host == "localhost":
            return False
        try:
            return not ipaddress.ip_address(host).is_loopback
        except ValueError:
            return True

    @property
    def where(self) -> str:
        """What a person reads in `tandem mcp list`: the command line or the URL."""
        return self.url or " ".join((self.command, *self.args))


def parse_servers(raw: Any) -> tuple[McpServerSpec, ...]:
    """The `[mcp]` table of config.toml as server specs, or McpConfigError naming the fault."""
    if not raw:
        return ()
    if not isinstance(raw, Mapping) or set(raw) - {"servers"}:
        raise McpConfigError("[mcp] holds only [mcp.servers.NAME] tables")
    servers = raw.get("servers") or {}
    if not isinstance(servers, Mapping):
        raise McpConfigError("[mcp.servers] must be a table of [mcp.servers.NAME] tables")
    return tuple(_server(name, table) for name, table in servers.items())


def _server(name: str, table: Any) -> McpServerSpec:
    where = f"[mcp.servers.{name}]"
    if not _NAME.match(name):
        raise McpConfigError(f"{where}: a server name is 1-32 letters, digits, '_' or '-'")
    if not isinstance(table, Mapping):
        raise McpConfigError(f"{where} must be a table")
    unknown = sorted(set(table) - _KEYS)
    if unknown:
        raise McpConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")
    command, url = table.get("command", ""), table.get("url", "")
    if not isinstance(command, str) or not isinstance(url, str):
        raise McpConfigError(f"{where}: command and url are strings")
    if bool(command) == bool(url):
        raise McpConfigError(f"{where}: give either command (stdio) or url (streamable HTTP)")
    if url and not re.match(r"^https?://", url):
        raise McpConfigError(f"{where}: url must start with http:// or https://")
    args = table.get("args", [])
    env = table.get("env", {})
    allow = table.get("allow", [])
    if not _strings(args) or not _strings(allow):
        raise McpConfigError(f"{where}: args and allow are lists of strings")
    if not isinstance(env, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise McpConfigError(f"{where}: env is a table of strings")
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        raise McpConfigError(f"{where}: enabled is true or false")
    timeout = table.get("timeout", DEFAULT_TIMEOUT_S)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 3600:
        raise McpConfigError(f"{where}: timeout is a number of seconds, above 0 and at most 3600")
    return McpServerSpec(
        name=name,
        command=command,
        args=tuple(args),
        env=dict(env),
        url=url,
        enabled=enabled,
        timeout_s=float(timeout),
        allow=tuple(allow),
    )


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)
