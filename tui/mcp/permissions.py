"""Whether a tool may run: the user is asked before each call — allow once, always for this
tool, or deny — unless config.toml's `allow` list or an earlier "always" in this chat lets it.

"Always" lasts until the chat quits: a standing permission belongs in config.toml, where the
user can read it (`allow = ["tool"]` under the server's table)."""

from __future__ import annotations

from enum import StrEnum

from tui.mcp.hub import McpHub, McpTool

__all__ = ["Decision", "Permissions"]


class Decision(StrEnum):
    ONCE = "once"
    ALWAYS = "always"
    DENY = "deny"


class Permissions:
    def __init__(self) -> None:
        self._always: set[tuple[str, str]] = set()

    def granted(self, hub: McpHub, tool: McpTool) -> bool:
        """Whether `tool` runs without asking."""
        return hub.allowed(tool) or (tool.server, tool.remote) in self._always

    def record(self, tool: McpTool, decision: Decision) -> None:
        if decision is Decision.ALWAYS:
            self._always.add((tool.server, tool.remote))
