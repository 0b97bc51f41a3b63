"""`tandem mcp list`: the MCP servers config.toml declares, started as the chat starts them,
with their state and the tools each offers the model."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from tui.config import ConfigError, load_config

__all__ = ["main"]

HELP_CONFIG = """\
Declare servers in config.toml (tandem's config folder):

  [mcp.servers.weather]          # a stdio server: tandem starts the command
  command = "uvx"
  args = ["mcp-server-weather"]
  env = { UNITS = "metric" }     # extra environment for the server
  timeout = 30                   # seconds one tool call may take
  allow = ["get_weather"]        # tools that run without asking (default: ask each time)
  enabled = true                 # false: declared, off until a conversation turns it on (F11)

  [mcp.servers.notes]            # a streamable-HTTP server: tandem connects to it
  url = "http://127.0.0.1:8765/mcp"
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem mcp",
        description=(
            "The chat's tools: MCP servers declared in config.toml. The chat starts the enabled "
            "ones, offers their tools to the model and asks you before each call runs (allow "
            "once, always for that tool, or deny); F11 picks the servers per conversation."
        ),
        epilog=HELP_CONFIG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="action", required=True)
    listing = sub.add_parser(
        "list",
        help="start each declared server, show its state and tools, stop it again",
        description=(
            "Start each server config.toml declares (disabled ones too, to check them), list "
            "its state (ready, failed and why) and its tools, then stop it. No tool is called "
            "and no model is loaded. Exit status 0 when every enabled server is ready, 1 when "
            "one is not, 2 when config.toml cannot be read."
        ),
    )
    listing.add_argument("--json", action="store_true", help="one JSON object per server")
    listing.add_argument(
        "--timeout", type=float, default=20.0, metavar="S",
        help="seconds a server may take to start (default 20)",
    )  # fmt: skip
    return parser


async def _states(specs: Any, timeout_s: float) -> list[Any]:
    from tui.mcp.hub import McpHub

    hub = McpHub(specs, connect_timeout_s=timeout_s)
    try:
        await hub.start(hub.names)
        return [(state, hub.tools([state.name])) for state in hub.states()]
    finally:
        await hub.aclose()


def _list(args: argparse.Namespace) -> int:
    try:
        specs = load_config().mcp_servers
    except ConfigError as exc:
        print(f"tandem mcp: {exc}", file=sys.stderr)
        return 2
    if not specs:
        print("No MCP server is declared.\n\n" + HELP_CONFIG, end="")
        return 0
    results = asyncio.run(_states(specs, args.timeout))
    healthy = True
    for (state, tools), spec in zip(results, specs, strict=True):
        healthy &= state.status == "ready" or not spec.enabled
        if args.json:
            print(json.dumps({
                "name": state.name, "enabled": spec.enabled, "transport": spec.transport,
                "where": spec.where, "status": state.status, "detail": state.detail,
                "tools": [{"name": t.name, "description": t.description} for t in tools],
                "allow": list(spec.allow),
            }))
            continue
        on = "" if spec.enabled else " (disabled: F11 turns it on per conversation)"
        line = f"{state.name}: {state.status}{on} — {spec.transport} {spec.where}"
        print(line + (f"\n  {state.detail}" if state.detail else ""))
        for tool in tools:
            ask = "runs without asking" if tool.remote in spec.allow else "asks first"
            print(f"  {tool.name} ({ask}): {tool.description}".rstrip(": "))
    return 0 if healthy else 1


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.action == "list":
        return _list(args)
    return 2
