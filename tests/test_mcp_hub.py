"""The chat's MCP servers on the official SDK, over real stdio and real streamable HTTP on
loopback (tests/mcp_weather.py): start, list, call; a tool that hangs times out, a server that
dies fails its call in one line and starts again; a bad declaration is a clear config error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from tui.config import Config, ConfigError
from tui.mcp.config import McpConfigError, McpServerSpec, parse_servers
from tui.mcp.hub import McpHub, ServerGone, ToolFailed, ToolTimedOut, ToolUnknown
from tui.mcp.permissions import Decision, Permissions

ROOT = Path(__file__).resolve().parent.parent


def weather(name: str = "weather", **changes: object) -> McpServerSpec:
    spec = McpServerSpec(name, command=sys.executable, args=("-m", "tests.mcp_weather"),
                         env={"PYTHONPATH": str(ROOT), "WEATHER_EXTRA_TOOLS": "1"})
    return replace(spec, **changes)  # type: ignore[arg-type]


@pytest.fixture
async def hub() -> AsyncIterator[McpHub]:
    hub = McpHub([weather(timeout_s=1.5), McpServerSpec("broken", command="/no/such/server")])
    await hub.start()
    try:
        yield hub
    finally:
        await hub.aclose()


async def test_a_stdio_server_starts_lists_its_tools_and_answers(hub: McpHub) -> None:
    states = {s.name: s for s in hub.states()}
    assert states["weather"].status == "ready"
    assert set(states["weather"].tools) == {"get_weather", "hang", "crash"}
    [tool] = [t for t in hub.tools() if t.name == "get_weather"]
    offered = tool.to_tool()
    assert offered.parameters["properties"]["city"]["type"] == "string"
    result = json.loads(await hub.call("get_weather", '{"city": "Oslo"}'))
    assert result["city"] == "Oslo" and result["condition"] == "foggy"


async def test_a_server_that_cannot_start_says_why_and_the_others_work(hub: McpHub) -> None:
    broken = next(s for s in hub.states() if s.name == "broken")
    assert broken.status == "failed" and "command not found" in broken.detail
    assert hub.tools(["broken"]) == ()
    assert await hub.call("get_weather", '{"city": "Lima"}')


async def test_a_hanging_tool_times_out_and_the_server_keeps_answering(hub: McpHub) -> None:
    with pytest.raises(ToolTimedOut, match=r"no result within 1\.5 s"):
        await hub.call("hang", "{}")
    assert json.loads(await hub.call("get_weather", '{"city": "Quito"}'))["city"] == "Quito"


async def test_a_server_that_dies_mid_call_fails_the_call_and_starts_again(hub: McpHub) -> None:
    with pytest.raises(ServerGone, match="stopped during the call"):
        await hub.call("crash", "{}")
    assert next(s for s in hub.states() if s.name == "weather").status == "stopped"
    with pytest.raises(ServerGone, match="not running"):
        await hub.call("get_weather", '{"city": "Oslo"}')
    await hub.start(["weather"])
    assert json.loads(await hub.call("get_weather", '{"city": "Oslo"}'))["city"] == "Oslo"


async def test_bad_calls_are_one_line_errors(hub: McpHub) -> None:
    with pytest.raises(ToolUnknown):
        await hub.call("no_such_tool", "{}")
    with pytest.raises(ToolFailed, match="not JSON"):
        await hub.call("get_weather", "{city")
    with pytest.raises(ToolFailed):  # the server refuses arguments that miss `city`
        await hub.call("get_weather", "{}")


async def test_two_servers_with_one_tool_name_are_told_apart() -> None:
    hub = McpHub([weather("one"), weather("two")])
    await hub.start()
    try:
        names = {t.name for t in hub.tools()}
        assert {"one__get_weather", "two__get_weather"} <= names
        assert json.loads(await hub.call("two__get_weather", '{"city": "Bern"}'))["city"] == "Bern"
    finally:
        await hub.aclose()


async def test_a_streamable_http_server_on_loopback_answers(mcp_http_server: str) -> None:
    hub = McpHub([McpServerSpec("web", url=mcp_http_server)])
    await hub.start()
    try:
        assert hub.states()[0].status == "ready"
        result = json.loads(await hub.call("get_weather", '{"city": "Oslo"}'))
        assert result["condition"] == "windy"  # the HTTP server's own, not the stdio one's
    finally:
        await hub.aclose()


def test_permissions_follow_the_config_and_an_always_answer() -> None:
    hub = McpHub([weather(allow=("get_weather",))])
    permissions = Permissions()
    from tui.mcp.hub import McpTool

    listed = McpTool("weather", "get_weather", "get_weather")
    other = McpTool("weather", "hang", "hang")
    assert permissions.granted(hub, listed) and not permissions.granted(hub, other)
    permissions.record(other, Decision.ONCE)
    assert not permissions.granted(hub, other)
    permissions.record(other, Decision.ALWAYS)
    assert permissions.granted(hub, other)


def test_declarations_are_checked_when_the_config_is_read() -> None:
    [spec] = parse_servers({"servers": {"w": {"command": "srv", "args": ["-x"], "timeout": 5,
                                              "allow": ["t"], "env": {"A": "1"}}}})
    assert (spec.transport, spec.where, spec.timeout_s, spec.allow) == ("stdio", "srv -x", 5.0,
                                                                       ("t",))
    bad = [
        {"servers": {"w": {}}},                                   # neither command nor url
        {"servers": {"w": {"command": "a", "url": "http://x"}}},  # both
        {"servers": {"w": {"url": "file:///etc/passwd"}}},
        {"servers": {"w": {"command": "a", "args": "-x"}}},
        {"servers": {"w": {"command": "a", "timeout": 0}}},
        {"servers": {"w": {"command": "a", "colour": "red"}}},
        {"servers": {"bad name": {"command": "a"}}},
        {"other": {}},
    ]
    for raw in bad:
        with pytest.raises(McpConfigError):
            parse_servers(raw)
    with pytest.raises(ConfigError, match=r"\[mcp.servers.w\]"):
        Config(mcp={"servers": {"w": {}}})


def test_tandem_mcp_list_starts_each_server_and_says_how_it_is(tmp_path: Path) -> None:
    config = tmp_path / "config" / "config.toml"
    config.parent.mkdir()
    config.write_text(
        "[mcp.servers.weather]\n"
        f'command = "{sys.executable}"\nargs = ["-m", "tests.mcp_weather"]\n'
        'allow = ["get_weather"]\n'
        f'env = {{ PYTHONPATH = "{ROOT}", WEATHER_EXTRA_TOOLS = "1" }}\n'
        '[mcp.servers.broken]\ncommand = "/no/such/server"\n'
    )
    env = {**os.environ, "TANDEM_HOME": str(tmp_path)}
    run = subprocess.run([sys.executable, "-m", "tui.cli", "mcp", "list"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1, run.stderr  # an enabled server did not start
    assert "weather: ready" in run.stdout
    assert "get_weather (runs without asking)" in run.stdout and "hang (asks first)" in run.stdout
    assert "broken: failed" in run.stdout and "command not found" in run.stdout
    listed = subprocess.run([sys.executable, "-m", "tui.cli", "mcp", "list", "--json"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [(r["name"], r["status"]) for r in rows] == [("weather", "ready"), ("broken", "failed")]


def test_saving_settings_keeps_the_declared_servers(tmp_path: Path) -> None:
    from tui.config import load_config, update_config

    path = tmp_path / "config.toml"
    path.write_text('[mcp.servers.w]\ncommand = "srv"\ntimeout = 5\n')
    update_config({"mode": "local-only"}, path)
    config = load_config(path)
    assert config.mode == "local-only"
    assert [(s.name, s.command, s.timeout_s) for s in config.mcp_servers] == [("w", "srv", 5.0)]


def test_a_local_only_conversation_offers_no_server_on_another_machine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tui.session import ChatSession
    from tui.store import Conversation

    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    servers = {"here": {"command": "srv"}, "loop": {"url": "http://127.0.0.1:9/mcp"},
               "v6": {"url": "http://[::1]:9/mcp"}, "away": {"url": "https://tools.example.org/mcp"},
               "off": {"command": "srv", "enabled": False}}
    session = ChatSession(Config(mcp={"servers": servers}))
    conv = Conversation(id="c", title="t", created_at=0.0, updated_at=0.0)
    assert session.tool_servers({}, conv) == ["here", "loop", "v6", "away"]
    assert session.tool_servers({"off": True, "here": False}, conv) == ["loop", "v6", "away", "off"]
    pinned = Conversation(id="c", title="t", created_at=0.0, updated_at=0.0, local_only=True)
    assert session.tool_servers({}, pinned) == ["here", "loop", "v6"]
    local = ChatSession(Config(mode="local-only", mcp={"servers": servers}))
    assert local.tool_servers({"away": True}, conv) == ["here", "loop", "v6"]


async def test_local_only_mode_never_connects_to_a_server_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tui.session import ChatSession

    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    servers = {"away": {"url": "https://tools.example.org/mcp"},
               "here": {"command": "/no/such/server"}}
    session = ChatSession(Config(mode="local-only", mcp={"servers": servers}))
    await session.start_tools()
    states = {s.name: s.status for s in session.tools.states()}
    assert states == {"away": "off", "here": "failed"}  # the local one was tried, not the other
    await session.aclose()
