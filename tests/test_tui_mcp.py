"""The chat's tools through MCP, end to end: the Qwen3-shaped test model on the real local
engine, a real MCP server over stdio or streamable HTTP on loopback (tests/mcp_weather.py),
the permission dialog in Textual's pilot. The model calls get_weather; allowing runs it on
this device and sends the result back, denying tells the model so, a hanging tool times out
in one line; the answer goes on each time. Shapes only: nothing the trained model says."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

import pytest

from router.protocol import ChatRequest, StreamEvent
from tests.tui_support import answer_views, last_answer, make_app, send, until
from tui.app import TandemApp
from tui.config import Config
from tui.screens.tools import ToolPermission, ToolServers
from tui.widgets.toolcard import ToolCallCard

pytestmark = pytest.mark.mlx

ROOT = Path(__file__).resolve().parent.parent
QUESTION = "What is the weather in Madrid?"


@pytest.fixture(autouse=True)
def _home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    return tmp_path


class Watched:
    """The module's real engine, recording each request it is sent (this only watches: the
    model, its calls and its answers stay real) and kept open when an app closes."""

    def __init__(self, engine: Any) -> None:
        self.engine, self.name = engine, engine.name
        self.requests: list[ChatRequest] = []

    @property
    def ready(self) -> bool:
        return bool(self.engine.ready)

    async def start(self) -> None:
        await self.engine.start()

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        self.requests.append(request)
        return self.engine.stream(request)  # type: ignore[no-any-return]

    async def health(self) -> Any:
        return await self.engine.health()

    def capabilities(self) -> Any:
        return self.engine.capabilities()

    async def aclose(self) -> None:
        """The module's engine outlives each app."""


def weather_config(**server: Any) -> Config:
    table = {"command": sys.executable, "args": ["-m", "tests.mcp_weather"],
             "env": {"PYTHONPATH": str(ROOT), **server.pop("env", {})}, **server}
    return Config(max_tokens=96, mcp={"servers": {"weather": table}})


async def answer_deciding(pilot: Any, app: TandemApp, text: str, key: str) -> int:
    """Send `text`; answer every permission dialog with `key` until the answer ends. How
    many times the chat asked."""
    await until(pilot, lambda: app.session.tools_started.is_set())
    await send(pilot, text)
    asked = 0
    while app.chat.streaming:
        if isinstance(app.screen, ToolPermission):
            asked += 1
            await pilot.press(key)
        await pilot.pause(0.02)
    await pilot.pause()
    return asked


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_allowing_a_call_runs_the_tool_here_and_the_answer_reads_its_result(
    thinking_engine: Any, transport: str, request: pytest.FixtureRequest
) -> None:
    watched = Watched(thinking_engine)
    if transport == "http":
        url = request.getfixturevalue("mcp_http_server")
        config = Config(max_tokens=96, mcp={"servers": {"weather": {"url": url}}})
    else:
        config = weather_config()
    app = make_app(watched, config=config)
    async with app.run_test(size=(110, 32)) as pilot:
        await until(pilot, lambda: app.session.tools_started.is_set())
        assert [t.name for t in app.session.tools.tools()] == ["get_weather"]
        await send(pilot, QUESTION)
        await until(pilot, lambda: isinstance(app.screen, ToolPermission))
        dialog = app.screen
        assert isinstance(dialog, ToolPermission)
        assert (dialog.server, dialog.tool) == ("weather", "get_weather")
        assert "city" in json.loads(dialog.arguments)
        await pilot.press("y")  # always for this tool: any further call runs without asking
        await until(pilot, lambda: not app.chat.streaming)
        await pilot.pause()
        stored = last_answer(app)
        calls = app.store.parts(stored.id).tool_calls
        assert calls and all("result" in c for c in calls)
        reported = {"stdio": "foggy", "http": "windy"}[transport]  # that server's own result
        assert json.loads(calls[0]["result"])["condition"] == reported
        # The model was offered the tools, and its next round read the call and the result.
        first, *later = [r for r in watched.requests if r.conversation_id == stored.conversation_id]
        assert [t.name for t in first.tools] == ["get_weather"]
        assert later, "the answer did not go on after the tool ran"
        said, result = later[0].messages[-2:]
        assert said.role == "assistant" and said.tool_calls[0].id == calls[0]["id"]
        assert result.role == "tool" and result.tool_call_id == calls[0]["id"]
        assert result.content == calls[0]["result"]
        assert stored.status == "complete" and stored.route is not None
        card = answer_views(app)[-1].query(ToolCallCard).first()
        assert reported in str(card.render())
        # The next question's history keeps the calls and their results before the answer.
        if stored.content:
            from tui.answering import build_request

            conv = app.store.conversation(stored.conversation_id)
            assert conv is not None
            app.store.add_message(conv.id, "user", "And tomorrow?")
            again = build_request(conv, app.store.messages(conv.id), max_tokens=8,
                                  parts=app.store.parts_of(conv.id))
            n = len(calls)
            *_, asked, called = again.messages[: -(n + 2)]
            assert asked.role == "user"
            assert [c.id for c in called.tool_calls] == [c["id"] for c in calls]
            assert [m.role for m in again.messages[-(n + 2):]] == (
                ["tool"] * n + ["assistant", "user"]
            )
            assert again.messages[-2].content == stored.content


async def test_denying_a_call_tells_the_model_and_the_answer_goes_on(
    thinking_engine: Any,
) -> None:
    watched = Watched(thinking_engine)
    app = make_app(watched, config=weather_config())
    async with app.run_test(size=(110, 32)) as pilot:
        asked = await answer_deciding(pilot, app, QUESTION, "d")
        assert asked >= 1
        stored = last_answer(app)
        calls = app.store.parts(stored.id).tool_calls
        assert calls and "denied" in calls[0]["result"]
        assert "denied" in watched.requests[-1].messages[-1].content
        assert stored.status == "complete"
        assert "denied" in str(answer_views(app)[-1].query(ToolCallCard).first().render())


async def test_a_hanging_tool_times_out_in_one_line_and_the_answer_goes_on(
    thinking_engine: Any,
) -> None:
    watched = Watched(thinking_engine)
    # Allowed in config.toml: no dialog; the server's get_weather never answers.
    config = weather_config(env={"WEATHER_HANGS": "1"}, timeout=1, allow=["get_weather"])
    app = make_app(watched, config=config)
    async with app.run_test(size=(110, 32)) as pilot:
        asked = await answer_deciding(pilot, app, QUESTION, "d")
        assert asked == 0
        stored = last_answer(app)
        calls = app.store.parts(stored.id).tool_calls
        assert calls and "no result within 1 s" in calls[0]["result"]
        assert stored.status == "complete" and stored.error == ""


async def test_f11_turns_a_server_off_for_one_conversation(thinking_engine: Any) -> None:
    watched = Watched(thinking_engine)
    app = make_app(watched, config=weather_config())
    async with app.run_test(size=(110, 32)) as pilot:
        await until(pilot, lambda: app.session.tools_started.is_set())
        await pilot.press("f11")
        await until(pilot, lambda: isinstance(app.screen, ToolServers))
        await pilot.press("space", "enter")  # the only server, off
        await until(pilot, lambda: not isinstance(app.screen, ToolServers))
        conv = app.chat.conversation
        assert conv is not None
        await until(pilot, lambda: app.store.tool_servers(conv.id) == {"weather": False})
        await answer_deciding(pilot, app, QUESTION, "d")
        assert watched.requests[-1].tools == ()
        assert not app.store.parts(last_answer(app).id).tool_calls
