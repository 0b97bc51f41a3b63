"""The dialogs of the chat's MCP tools: asking before a call runs, and choosing which servers'
tools a conversation offers the model (F11)."""

from __future__ import annotations

import json
from typing import ClassVar

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, SelectionList, Static

from tui.mcp.hub import ServerState
from tui.mcp.permissions import Decision

__all__ = ["ToolPermission", "ToolServers"]

ARGUMENTS_SHOWN = 1200


class ToolPermission(ModalScreen[Decision]):
    """May this call run? Allow once (a), always for this tool (y), deny (d or Esc)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("a", "choose('once')", "Allow once"),
        Binding("y", "choose('always')", "Always"),
        Binding("d,escape", "choose('deny')", "Deny"),
    ]

    def __init__(self, server: str, tool: str, arguments: str) -> None:
        super().__init__(classes="dialog")
        self.server, self.tool, self.arguments = server, tool, arguments

    def compose(self) -> ComposeResult:
        try:
            shown = json.dumps(json.loads(self.arguments), indent=2, ensure_ascii=False)
        except ValueError:
            shown = self.arguments
        if len(shown) > ARGUMENTS_SHOWN:
            shown = shown[:ARGUMENTS_SHOWN] + "\n…"
        with Vertical(classes="box wide", id="tool-permission"):
            yield Label(f"The model wants to run {self.tool} (MCP server {self.server}) "
                        "on this device", classes="title", markup=False)
            yield Static(shown, markup=False, id="tool-arguments")
            yield Button("Allow once (a)", id="once", variant="primary")
            yield Button("Always allow this tool (y)", id="always")
            yield Button("Deny (d, Esc)", id="deny", variant="error")

    @on(Button.Pressed)
    def _pressed(self, event: Button.Pressed) -> None:
        self.action_choose(event.button.id or "deny")

    def action_choose(self, choice: str) -> None:
        self.dismiss(Decision(choice))


class ToolServers(ModalScreen[dict[str, bool] | None]):
    """Which MCP servers' tools this conversation offers: space toggles, Enter keeps."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("escape", "dismiss(None)", "Cancel"),
        Binding("enter", "keep", "Keep", priority=True),
    ]

    def __init__(self, states: list[ServerState], on: list[str]) -> None:
        super().__init__(classes="dialog")
        self._states, self._on = states, set(on)

    def compose(self) -> ComposeResult:
        with Vertical(classes="box wide"):
            yield Label("Tools for this conversation (MCP servers)", classes="title")
            if not self._states:
                yield Static("No MCP server is declared: add [mcp.servers.NAME] to "
                             "config.toml (see the README).", markup=False)
            yield SelectionList[str](
                *[(f"{s.name} — {_state_line(s)}", s.name, s.name in self._on)
                  for s in self._states],
                id="tool-servers",
            )
            yield Label("Space toggles · Enter keeps · Esc cancels", classes="hint")

    def action_keep(self) -> None:
        chosen = set(self.query_one(SelectionList).selected)
        self.dismiss({s.name: s.name in chosen for s in self._states})


def _state_line(state: ServerState) -> str:
    if state.status == "ready":
        return f"{len(state.tools)} tool(s): {', '.join(state.tools)}"[:80]
    if state.detail:
        return f"{state.status}: {state.detail}"[:80]
    return state.status
