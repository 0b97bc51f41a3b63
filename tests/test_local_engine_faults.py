"""The local engine when things go wrong or take long, on real MLX with the test models:
a worker that fails (nobody waits forever), the load read while the worker works, adapters
read off the decode loop and reloaded after a retrain, Esc during a long prefill, the
context window the memory guard planned, and the time to first token from submission.

Where a fault cannot be made to happen on demand with the real parts, the test injects it and
says so; the engine, the model and its streams stay real."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import local.engine as engine_module
from local.engine import GUARD_CONTEXT_CAP, LocalEngine
from router.protocol import (
    ChatRequest,
    ContextTooLong,
    Message,
    Sampling,
    TextDelta,
    Unavailable,
    collect,
)
from scripts.testmodels import ModelSet
from tests.test_local_engine import _write_adapter

pytestmark = pytest.mark.mlx

RIVER = "Tell me about the river."
FRANCE = "What is the capital of France?"


def ask(question: str, max_tokens: int = 24, **kw: Any) -> ChatRequest:
    return ChatRequest((Message("user", question),), Sampling(max_tokens=max_tokens), **kw)


async def _drain(stream: Any) -> BaseException | None:
    try:
        await collect(stream)
    except BaseException as exc:  # what the caller got
        return exc
    return None


async def test_a_worker_that_fails_while_failing_a_lane_ends_every_open_stream(
    test_models: ModelSet,
) -> None:
    """Injected: the lane's step raises, and so does failing the lane (the second exception
    that used to kill the worker thread and leave every stream waiting on its queue)."""
    eng = LocalEngine(test_models.target, max_batch=1)
    await eng.start()
    try:
        running = eng.stream(ask(RIVER, max_tokens=200))
        first = await anext(running)
        assert isinstance(first, TextDelta)
        waiting = eng.stream(ask(FRANCE))  # max_batch 1: it waits behind the first
        waiting_task = asyncio.create_task(_drain(waiting))
        await asyncio.sleep(0.05)
        assert eng._worker is not None
        lane = eng._worker.lanes[None]

        def boom(*_: Any) -> None:
            raise RuntimeError("injected fault")

        lane.fail = boom  # type: ignore[method-assign]
        lane.fail_all = boom  # type: ignore[attr-defined]  # (its name before the scheduler)
        lane.step = boom  # type: ignore[method-assign]
        errors = await asyncio.wait_for(
            asyncio.gather(_drain(running), waiting_task), timeout=60
        )
        for error in errors:
            assert isinstance(error, Unavailable), error
            assert "stopped" in str(error)
        with pytest.raises(Unavailable):
            await collect(eng.stream(ask(FRANCE)))
        assert not (await eng.health()).ok
    finally:
        await eng.aclose()


class _WorkerOnlyDict(dict):  # type: ignore[type-arg]
    """Injected race: iterating the worker's lanes from any other thread fails the way a dict
    does when the worker adds a lane meanwhile ("changed size during iteration")."""

    def __init__(self, data: dict[Any, Any], owner: threading.Thread) -> None:
        super().__init__(data)
        self.owner = owner

    def _check(self) -> None:
        if threading.current_thread() is not self.owner:
            raise RuntimeError("dictionary changed size during iteration")

    def __iter__(self) -> Any:
        self._check()
        return super().__iter__()

    def keys(self) -> Any:
        self._check()
        return super().keys()

    def items(self) -> Any:
        self._check()
        return super().items()

    def values(self) -> Any:
        self._check()
        return super().values()


async def test_capabilities_read_the_published_snapshot_not_the_workers_lists(
    test_models: ModelSet,
) -> None:
    eng = LocalEngine(test_models.target)
    await eng.start()
    try:
        worker = eng._worker
        assert worker is not None
        worker.lanes = _WorkerOnlyDict(worker.lanes, worker)
        stream = eng.stream(ask(RIVER, max_tokens=200))
        assert isinstance(await anext(stream), TextDelta)
        await asyncio.sleep(0.05)
        caps = eng.capabilities()  # from the event loop's thread, while the worker steps
        assert caps.load.active_sequences == 1 and caps.load.queue_depth == 0
        assert caps.adapters == ()
        await stream.aclose()
    finally:
        await eng.aclose()


async def test_reading_an_adapter_does_not_stall_a_running_answer(
    test_models: ModelSet, tmp_path: Path
) -> None:
    """Injected: a resolver that blocks until the test lets it go (a slow disk or registry).
    The base model's answer must finish meanwhile: the read happens off the decode loop."""
    _write_adapter(test_models.target, tmp_path / "zero")
    release = threading.Event()

    def slow_resolve(name: str) -> Path:
        release.wait(60)
        return tmp_path / name

    eng = LocalEngine(test_models.target, adapter_resolver=slow_resolve)
    await eng.start()
    try:
        base = eng.stream(ask(RIVER, max_tokens=40))
        assert isinstance(await anext(base), TextDelta)
        adapted = asyncio.create_task(collect(eng.stream(ask(FRANCE, adapter="zero"))))
        await asyncio.sleep(0.05)
        _, final = await asyncio.wait_for(collect(base), timeout=60)
        assert final.finish_reason in ("stop", "length")
        assert not adapted.done() and not release.is_set()
        release.set()
        _, adapted_final = await asyncio.wait_for(adapted, timeout=60)
        assert adapted_final.adapter == "zero"
    finally:
        release.set()
        await eng.aclose()


async def test_an_adapter_retrained_under_the_same_name_is_loaded_again(
    test_models: ModelSet, tmp_path: Path
) -> None:
    folder = tmp_path / "mine"
    _write_adapter(test_models.target, folder)  # lora_b zero: answers like the base
    eng = LocalEngine(test_models.target, adapter_resolver=lambda name: tmp_path / name)
    await eng.start()
    try:
        await collect(eng.stream(ask(FRANCE, adapter="mine")))
        assert eng._worker is not None
        old = [k for k in eng._worker.lanes if k is not None]
        # "Retrain": new weights under the same name, written the way the registry writes.
        _randomize_lora_b(folder)
        after, final = await collect(eng.stream(ask(FRANCE, adapter="mine")))
        new = [k for k in eng._worker.lanes if k is not None]
        assert final.adapter == "mine" and new != old and len(new) == 1
    finally:
        await eng.aclose()
    fresh = LocalEngine(test_models.target, adapter_resolver=lambda name: tmp_path / name)
    await fresh.start()
    try:
        expected, _ = await collect(fresh.stream(ask(FRANCE, adapter="mine")))
    finally:
        await fresh.aclose()
    assert after == expected  # the new weights, as a freshly started engine loads them


def _randomize_lora_b(folder: Path) -> None:
    import mlx.core as mx

    weights = mx.load(str(folder / "adapters.safetensors"))
    assert isinstance(weights, dict)
    mx.random.seed(7)
    changed = {
        k: (mx.random.normal(v.shape) * 0.5 if k.endswith("lora_b") else v)
        for k, v in weights.items()
    }
    tmp = folder / "adapters.tmp.safetensors"
    mx.save_safetensors(str(tmp), changed)
    tmp.replace(folder / "adapters.safetensors")


class _CountingForward:
    """Watches traffic: counts the prompt tokens the model is fed in prefill-sized pieces,
    and says when the first piece went in. The model itself runs unchanged."""

    def __init__(self, model: Any, piece: int) -> None:
        self._model = model
        self.piece = piece
        self.fed = 0
        self.started = threading.Event()

    def __call__(self, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        n = int(inputs.shape[-1])
        if n >= self.piece:
            self.fed += n
            self.started.set()
        return self._model(inputs, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


async def test_esc_during_a_long_prefill_stops_it_between_chunks(test_models: ModelSet) -> None:
    chunk = 128
    eng = LocalEngine(test_models.target, prefill_chunk_tokens=chunk)
    await eng.start()
    try:
        assert eng._worker is not None and eng._worker.main is not None
        lane = eng._worker.lanes[None]
        counter = _CountingForward(lane.model, chunk)
        lane.model = counter
        long_text = " ".join(["the river runs past the mill"] * 200)
        request = ask(long_text, max_tokens=8)
        prompt = len(engine_module.encode_prompt(eng._worker.main.tokenizer, request))
        assert prompt > 10 * chunk
        stream = eng.stream(request)
        pending = asyncio.ensure_future(anext(stream))
        assert await asyncio.to_thread(counter.started.wait, 60)
        pending.cancel()  # Esc: the chat cancels its worker, which closes the stream
        with contextlib.suppress(asyncio.CancelledError):
            await pending
        await stream.aclose()
        deadline = time.monotonic() + 60
        while eng.capabilities().load.active_sequences and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert eng.capabilities().load.active_sequences == 0
        assert counter.fed < prompt - chunk  # it stopped before the prompt was all in
    finally:
        await eng.aclose()


async def test_the_window_admitted_is_the_one_the_memory_guard_planned(
    test_models: ModelSet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model that claims 32k positions: the guard plans GUARD_CONTEXT_CAP tokens of cache,
    and the engine admits no more (the router then sends a longer chat to the cloud)."""
    folder = tmp_path / "long"
    shutil.copytree(test_models.target, folder)
    config = json.loads((folder / "config.json").read_text())
    config["max_position_embeddings"] = 32768
    (folder / "config.json").write_text(json.dumps(config))
    planned: list[int] = []
    import local.models

    real_check = local.models.check_fits

    def watching(*args: Any, **kwargs: Any) -> Any:  # watches the guard, changes nothing
        planned.append(kwargs["context_tokens"])
        return real_check(*args, **kwargs)

    monkeypatch.setattr(local.models, "check_fits", watching)
    eng = LocalEngine(folder)
    assert eng.capabilities().context_window == GUARD_CONTEXT_CAP  # before loading, too
    await eng.start()
    try:
        assert planned == [GUARD_CONTEXT_CAP]
        assert eng.capabilities().context_window == GUARD_CONTEXT_CAP
        too_long = ask("word " * (GUARD_CONTEXT_CAP + 100), max_tokens=8)
        with pytest.raises(ContextTooLong) as caught:
            await collect(eng.stream(too_long))
        assert caught.value.context_window == GUARD_CONTEXT_CAP
    finally:
        await eng.aclose()


async def test_the_time_to_first_token_includes_templating_and_tokenization(
    test_models: ModelSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Injected: a slow chat template (a long history on a slow machine). The engine's
    time to first token must include it, as the user waits for it too."""
    spent: list[float] = []
    real_encode = engine_module.encode_prompt

    def slow_encode(tokenizer: Any, request: ChatRequest) -> list[int]:
        started = time.perf_counter()
        time.sleep(0.2)
        tokens = real_encode(tokenizer, request)
        spent.append(time.perf_counter() - started)
        return tokens

    monkeypatch.setattr(engine_module, "encode_prompt", slow_encode)
    eng = LocalEngine(test_models.target)
    await eng.start()
    try:
        _, final = await collect(eng.stream(ask(FRANCE)))
        assert final.usage.ttft_s is not None and spent
        assert final.usage.ttft_s >= spent[0]
    finally:
        await eng.aclose()


async def test_a_prompt_prefilled_in_chunks_answers_as_one_prefilled_whole(
    test_models: ModelSet,
) -> None:
    request = ask(" ".join(["the river runs past the mill"] * 60), max_tokens=16)
    answers = []
    for chunk in (32, 100_000):
        eng = LocalEngine(test_models.target, prefill_chunk_tokens=chunk)
        await eng.start()
        try:
            answers.append((await collect(eng.stream(request)))[0])
        finally:
            await eng.aclose()
    assert answers[0] == answers[1]
