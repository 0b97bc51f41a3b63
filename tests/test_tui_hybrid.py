"""The chat on both engines: the real local engine and the real cloud (gateway + vLLM) behind
the router; "regenerate on the other side" moves an answer to the cloud and back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from textual.widgets import Static

from cloud.client import CloudClient
from tests.reference import mlx_greedy, vllm_greedy
from tests.tui_support import answer, answer_views, last_answer, make_app, until
from tui.widgets.status import StatusBar

pytestmark = [pytest.mark.mlx, pytest.mark.vllm]

DOG = "What sound does a dog make?"


async def test_regenerate_on_the_other_side_moves_the_answer_to_the_cloud_and_back(
    tui_local_engine: Any, cloud_gateway: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    test_models: Any,
) -> None:
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    async with CloudClient(cloud_gateway.url, cloud_gateway.api_key, model="target") as cloud:
        app = make_app(tui_local_engine, cloud=cloud)
        async with app.run_test(size=(120, 32)) as pilot:
            app.check_cloud()
            await until(pilot, lambda: app.cloud_state == "connected")
            assert "cloud: connected" in str(app.chat.query_one(StatusBar).render())

            first = await answer(pilot, DOG)
            assert first.route is not None and first.route.backend == "local"

            await pilot.press("ctrl+o")
            await until(pilot, lambda: last_answer(app).id != first.id)
            await until(pilot, lambda: not app.chat.streaming)
            on_cloud = last_answer(app)
            assert on_cloud.route is not None and on_cloud.route.backend == "cloud"
            assert on_cloud.content == vllm_greedy(  # each side's own answer on this machine
                cloud_gateway.vllm.url, cloud_gateway.vllm.served_model, DOG, 48)
            badge = str(answer_views(app)[-1].query_one(".badge", Static).render())
            assert badge.startswith("cloud") and on_cloud.route.reason in badge

            await pilot.press("ctrl+o")
            await until(pilot, lambda: last_answer(app).id != on_cloud.id)
            await until(pilot, lambda: not app.chat.streaming)
            back = last_answer(app)
            assert back.route is not None and back.route.backend == "local"
            assert back.content == mlx_greedy(test_models.target, DOG, max_tokens=48)


async def test_a_local_only_pin_keeps_answers_on_the_device(
    tui_local_engine: Any, cloud_gateway: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    async with CloudClient(cloud_gateway.url, cloud_gateway.api_key, model="target") as cloud:
        app = make_app(tui_local_engine, cloud=cloud)
        async with app.run_test(size=(120, 32)) as pilot:
            await pilot.press("f7")
            assert app.chat.conversation is not None and app.chat.conversation.local_only
            stored = await answer(pilot, "/cloud What is the capital of France?")
            assert stored.route is not None and stored.route.backend == "local"
            assert stored.route.rule == "pin"
            await pilot.press("ctrl+o")
            await pilot.pause(0.2)
            assert last_answer(app).id == stored.id
            assert any("pinned to this device" in str(n.message) for n in app._notifications)


async def test_a_model_that_fails_to_load_does_not_block_the_cloud(
    cloud_gateway: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from local.engine import LocalEngine

    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    broken = tmp_path / "not-a-model"
    broken.mkdir()  # a folder without config.json: the engine's load fails
    engine = LocalEngine(broken)
    async with CloudClient(cloud_gateway.url, cloud_gateway.api_key, model="target") as cloud:
        app = make_app(engine, cloud=cloud)
        async with app.run_test(size=(120, 32)) as pilot:
            await until(pilot, lambda: app.backend_ready.is_set())
            assert app.boot_error is not None and "config.json" in app.boot_error
            bar = app.chat.query_one(StatusBar)
            await until(pilot, lambda: "not loaded" in str(bar.render()))
            stored = await answer(pilot, DOG)
            assert stored.status == "complete", stored.error
            assert stored.route is not None and stored.route.backend == "cloud"
            assert stored.content
    await engine.aclose()
