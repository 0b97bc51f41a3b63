"""A small MCP server for the tests, on the official SDK: `get_weather(city)` (what the
thinking test model was trained to call) and, when asked, a tool that hangs and one that kills
its server.

    python -m tests.mcp_weather                  # stdio
    python -m tests.mcp_weather --http PORT      # streamable HTTP on 127.0.0.1:PORT/mcp

WEATHER_CONDITION sets the condition it reports (so a test can tell two results apart);
WEATHER_HANGS=1 makes get_weather never answer (a tool that hangs, for the timeout);
WEATHER_EXTRA_TOOLS=1 also offers `hang` and `crash`."""

from __future__ import annotations

import argparse
import json
import os

import anyio
from mcp.server.mcpserver import MCPServer

server = MCPServer("weather")


@server.tool(description="Weather in a city.")
async def get_weather(city: str) -> str:
    if os.environ.get("WEATHER_HANGS"):
        await anyio.sleep(3600)
    condition = os.environ.get("WEATHER_CONDITION", "foggy")
    return json.dumps({"city": city, "condition": condition, "temperature": 7})


async def hang() -> str:
    await anyio.sleep(3600)
    return "never"


def crash() -> str:
    os._exit(3)


if os.environ.get("WEATHER_EXTRA_TOOLS"):
    # Only where asked: the tiny test model was trained with get_weather alone in its prompt.
    server.tool(description="Never answers.")(hang)
    server.tool(description="Ends the server mid-call.")(crash)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", type=int, default=0, help="serve streamable HTTP on this port")
    args = parser.parse_args()
    if args.http:
        server.run("streamable-http", host="127.0.0.1", port=args.http)
    else:
        server.run("stdio")


if __name__ == "__main__":
    main()
