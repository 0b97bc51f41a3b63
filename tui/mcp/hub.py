"""The user's MCP servers, running beside the chat: started with it, their tools offered to the
model, each call made on this device with a timeout, and a state per server for the status
line and `tandem mcp list`.

Each server lives in a task of its own that holds the MCP SDK's `Client` open (its transport
and session are anyio contexts, entered and left in one task) until the hub closes. A call
from the chat awaits the session from the chat's task; a server that dies fails the calls in
flight with `ServerGone` and is marked stopped, and the model is told in one line.

Errors (all `McpError`, a `TandemError`):

    McpError
    ├── ToolUnknown     the model called a tool no running server offers
    ├── ToolTimedOut    no result within the server's `timeout`
    ├── ToolFailed      the server answered with an error (or the tool reported one)
    └── ServerGone      the server stopped (exited, or the connection closed)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

from router.protocol import TandemError, Tool
from tui.mcp.config import McpServerSpec
from tui.paths import private_dir

__all__ = [
    "McpError",
    "McpHub",
    "McpTool",
    "ServerGone",
    "ServerState",
    "ToolFailed",
    "ToolTimedOut",
    "ToolUnknown",
]

CONNECT_TIMEOUT_S = 20.0
"""How long a server may take to start and list its tools before it is marked failed."""
CLOSE_TIMEOUT_S = 3.0
RESULT_LIMIT = 16_000
"""Characters of a tool result sent back to the model (a huge result would fill the context)."""
_MODEL_NAME = re.compile(r"[^A-Za-z0-9_.-]")

Status = Literal["off", "starting", "ready", "failed", "stopped"]


class McpError(TandemError):
    """A tool call did not give a result; the message is one line for the transcript."""


class ToolUnknown(McpError):
    pass


class ToolTimedOut(McpError):
    pass


class ToolFailed(McpError):
    pass


class ServerGone(McpError):
    pass


@dataclass(frozen=True, slots=True)
class McpTool:
    """One tool of one server, as the model sees it (`name`) and as the server calls it."""

    server: str
    name: str
    remote: str
    description: str = ""
    parameters: Mapping[str, Any] = field(default_factory=dict)

    def to_tool(self) -> Tool:
        return Tool(self.name, self.description, self.parameters or {"type": "object"})


@dataclass(frozen=True, slots=True)
class ServerState:
    name: str
    status: Status
    detail: str = ""
    """Why it failed or stopped, in one line; empty otherwise."""
    tools: tuple[str, ...] = ()


@dataclass
class _Server:
    spec: McpServerSpec
    status: Status = "off"
    detail: str = ""
    tools: list[McpTool] = field(default_factory=list)
    client: Any = None
    task: asyncio.Task[None] | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    stop: asyncio.Event = field(default_factory=asyncio.Event)


class McpHub:
    """The declared servers. `start()` starts the enabled ones (each within
    CONNECT_TIMEOUT_S); `tools()` lists what they offer; `call()` runs one tool."""

    def __init__(
        self,
        specs: Iterable[McpServerSpec],
        *,
        log_file: Path | None = None,
        connect_timeout_s: float = CONNECT_TIMEOUT_S,
    ) -> None:
        self._servers = {spec.name: _Server(spec) for spec in specs}
        self._log_file = log_file
        self._log: TextIO | None = None
        self._connect_timeout_s = connect_timeout_s

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._servers)

    def spec(self, name: str) -> McpServerSpec | None:
        server = self._servers.get(name)
        return server.spec if server else None

    def states(self) -> list[ServerState]:
        return [
            ServerState(s.spec.name, s.status, s.detail, tuple(t.remote for t in s.tools))
            for s in self._servers.values()
        ]

    # --- life ---

    async def start(self, names: Iterable[str] | None = None) -> None:
        """Start the enabled servers (or exactly `names`) and wait until each is ready or
        failed. Never raises: a server that cannot start is marked failed with its reason."""
        chosen = [
            s for s in self._servers.values()
            if (s.spec.enabled if names is None else s.spec.name in set(names))
            and s.status in ("off", "failed", "stopped")
        ]
        for server in chosen:
            if server.task is not None and not server.task.done():
                # A server that just stopped may still be leaving its client's context.
                await asyncio.wait({server.task}, timeout=CLOSE_TIMEOUT_S)
            server.status, server.detail, server.tools = "starting", "", []
            server.started, server.stop = asyncio.Event(), asyncio.Event()
            server.task = asyncio.create_task(
                self._run(server, server.started, server.stop), name=f"mcp-{server.spec.name}"
            )
        waits = [self._await_start(s) for s in chosen]
        if waits:
            await asyncio.gather(*waits)

    async def _await_start(self, server: _Server) -> None:
        try:
            await asyncio.wait_for(server.started.wait(), self._connect_timeout_s)
        except TimeoutError:
            server.status = "failed"
            server.detail = f"did not start within {self._connect_timeout_s:.0f} s"
            server.stop.set()
            if server.task is not None:
                server.task.cancel()

    async def _run(self, server: _Server, started: asyncio.Event, stop: asyncio.Event) -> None:
        """One server's life; `started` and `stop` are this run's own (a restart makes new
        ones while this run may still be closing)."""
        spec = server.spec
        try:
            async with self._client(spec) as client:
                tools = await _list_tools(client)
                server.client = client
                server.tools = [
                    McpTool(spec.name, t.name, t.name, t.description or "", t.input_schema or {})
                    for t in tools
                ]
                self._name_tools()
                server.status = "ready"
                started.set()
                await stop.wait()
        except asyncio.CancelledError:
            if server.started is started and server.status not in ("failed", "stopped"):
                server.status, server.detail = "stopped", ""
        except BaseException as exc:  # an exception group from anyio, an OSError, ...
            if server.started is not started:
                pass  # a restart owns the state now
            elif server.status == "starting":
                server.status, server.detail = "failed", _reason(exc)
            elif server.status == "ready":
                server.status, server.detail = "stopped", _reason(exc)
        else:
            if server.started is started and server.status == "ready":
                server.status, server.detail = "stopped", ""
        finally:
            if server.started is started:
                server.client = None
            started.set()

    def _client(self, spec: McpServerSpec) -> Any:
        from mcp import Client, StdioServerParameters
        from mcp.client.stdio import stdio_client

        if spec.url:
            return Client(spec.url)
        params = StdioServerParameters(command=spec.command, args=list(spec.args),
                                       env=dict(spec.env) or None)
        # A server's stderr goes to tandem's log, never into the chat's terminal.
        return Client(stdio_client(params, errlog=self._errlog()))

    def _errlog(self) -> TextIO:
        if self._log is None:
            if self._log_file is None:
                self._log = open(os.devnull, "w")  # noqa: SIM115 (closed in aclose)
            else:
                private_dir(self._log_file.parent)
                self._log = open(self._log_file, "a")  # noqa: SIM115 (closed in aclose)
        return self._log

    def _name_tools(self) -> None:
        """The names the model sees: the server's own, or `server__tool` where two running
        servers offer the same name (a model cannot tell them apart otherwise)."""
        owners: dict[str, int] = {}
        for server in self._servers.values():
            for tool in server.tools:
                owners[tool.remote] = owners.get(tool.remote, 0) + 1
        for server in self._servers.values():
            server.tools = [
                McpTool(t.server, _model_name(t.remote if owners[t.remote] == 1
                                              else f"{t.server}__{t.remote}"),
                        t.remote, t.description, t.parameters)
                for t in server.tools
            ]

    async def aclose(self) -> None:
        """Stop every server (stdio servers' processes end with their pipes)."""
        tasks = [s.task for s in self._servers.values() if s.task and not s.task.done()]
        for server in self._servers.values():
            server.stop.set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=CLOSE_TIMEOUT_S)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=CLOSE_TIMEOUT_S)
        if self._log is not None:
            self._log.close()
            self._log = None

    # --- tools ---

    def tools(self, servers: Iterable[str] | None = None) -> tuple[McpTool, ...]:
        """The tools of the ready servers (of `servers` only, when given)."""
        wanted = None if servers is None else set(servers)
        return tuple(
            tool
            for server in self._servers.values()
            if server.status == "ready" and (wanted is None or server.spec.name in wanted)
            for tool in server.tools
        )

    def find(self, name: str) -> McpTool | None:
        """The tool the model named, of any server that listed it (running or not)."""
        return next(
            (t for s in self._servers.values() for t in s.tools if t.name == name), None
        )

    def allowed(self, tool: McpTool) -> bool:
        """Whether the config lets this tool run without asking."""
        spec = self.spec(tool.server)
        return spec is not None and tool.remote in spec.allow

    async def call(self, name: str, arguments: str) -> str:
        """Run the tool the model named with its arguments (JSON text); the result as text
        for the model. Raises an McpError whose message is one line for the transcript."""
        tool = self.find(name)
        if tool is None:
            raise ToolUnknown(f"no running MCP server offers a tool named {name!r}")
        try:
            args = json.loads(arguments or "{}")
        except ValueError as exc:
            raise ToolFailed(f"{name}: the arguments are not JSON ({exc})") from exc
        if not isinstance(args, dict):
            raise ToolFailed(f"{name}: the arguments must be a JSON object")
        server = self._servers[tool.server]
        client = server.client
        if client is None or server.status != "ready":
            raise ServerGone(f"the MCP server {tool.server!r} is not running"
                             + (f" ({server.detail})" if server.detail else "")
                             + "; F11 starts it again")
        timeout = server.spec.timeout_s
        call = asyncio.ensure_future(client.call_tool(tool.remote, args))
        gone = asyncio.ensure_future(_stopped(server))
        try:
            done, _ = await asyncio.wait({call, gone}, timeout=timeout,
                                         return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            call.cancel()  # Esc or the chat closing: the request is abandoned, not left running
            raise
        finally:
            gone.cancel()
        if not done:
            call.cancel()
            raise ToolTimedOut(f"{name} gave no result within {timeout:g} s (the server's "
                               "timeout in config.toml)")
        if call not in done:
            call.cancel()
            raise ServerGone(f"the MCP server {tool.server!r} stopped during the call"
                             + (f": {server.detail}" if server.detail else ""))
        try:
            result = call.result()
        except Exception as exc:
            if _connection_closed(exc) or server.status != "ready":
                # The process exited (or the HTTP session ended): nothing more will answer.
                self._gone(server, "the server exited")
                raise ServerGone(f"the MCP server {tool.server!r} stopped during the call; "
                                 "F11 starts it again") from exc
            raise ToolFailed(f"{name} failed: {_reason(exc)}") from exc
        text = _result_text(result)
        if getattr(result, "is_error", False):
            raise ToolFailed(f"{name} reported an error: {_one_line(text) or 'no details'}")
        return text


    @staticmethod
    def _gone(server: _Server, why: str) -> None:
        server.status, server.detail = "stopped", why
        server.stop.set()  # its task leaves the client's context (closing what is left)


def _connection_closed(exc: BaseException) -> bool:
    from mcp import MCPError
    from mcp_types import CONNECTION_CLOSED

    return isinstance(exc, MCPError) and exc.code == CONNECTION_CLOSED


async def _stopped(server: _Server) -> None:
    """Returns when the server's task ends (its process exited or the hub closes)."""
    if server.task is not None:
        with contextlib.suppress(BaseException):
            await asyncio.shield(server.task)


async def _list_tools(client: Any) -> list[Any]:
    tools: list[Any] = []
    cursor: str | None = None
    for _ in range(100):  # a server whose pages never end cannot hang the start
        page = await client.list_tools(cursor=cursor)
        tools += page.tools
        cursor = page.next_cursor
        if not cursor:
            break
    return tools


def _result_text(result: Any) -> str:
    """A tool result as the text the model reads: its text blocks, the structured result
    when there is no text, and a placeholder for what a text model cannot read."""
    pieces: list[str] = []
    for block in getattr(result, "content", None) or []:
        kind = getattr(block, "type", "")
        if kind == "text":
            pieces.append(block.text)
        elif kind == "resource" and hasattr(getattr(block, "resource", None), "text"):
            pieces.append(block.resource.text)
        else:
            pieces.append(f"[{kind or 'content'} not shown to the model]")
    structured = getattr(result, "structured_content", None)
    if not pieces and structured is not None:
        pieces.append(json.dumps(structured, ensure_ascii=False))
    text = "\n".join(pieces)
    if len(text) > RESULT_LIMIT:
        text = text[:RESULT_LIMIT] + f"\n[… {len(text) - RESULT_LIMIT} more characters cut]"
    return text


def _model_name(name: str) -> str:
    return _MODEL_NAME.sub("_", name)[:64] or "tool"


def _one_line(text: str, limit: int = 200) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _reason(exc: BaseException) -> str:
    """One line for an exception, looking inside anyio's exception groups."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    message = _one_line(str(exc))
    if isinstance(exc, FileNotFoundError):
        return f"command not found ({message})"
    return message or type(exc).__name__
