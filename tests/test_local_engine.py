"""The local engine on real MLX with the trained test models: streaming, batching, KV reuse,
cancellation, speculative decoding, capabilities and errors."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from local.engine import LocalEngine, encode_prompt
from local.models import ModelTooLarge
from router.protocol import (
    Backend,
    ChatRequest,
    ContextTooLong,
    Final,
    Message,
    ModelError,
    Sampling,
    TextDelta,
    Unavailable,
    checked,
    collect,
)
from scripts.testmodels import ModelSet
from tests.reference import mlx_greedy, word_in

pytestmark = pytest.mark.mlx

FRANCE = "What is the capital of France?"
RIVER = "Tell me about the river."
DOG = "What sound does a dog make?"


def said(models: ModelSet, question: str, max_tokens: int = 24) -> str:
    """Plain mlx-lm's greedy answer on this machine: what the engine must say too (the test
    models are trained where the tests run, so the text itself is never fixed here)."""
    return mlx_greedy(models.target, question, max_tokens=max_tokens)


def ask(question: str, max_tokens: int = 24, **kw: object) -> ChatRequest:
    return ChatRequest((Message("user", question),), Sampling(max_tokens=max_tokens), **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
async def engine(test_models: ModelSet) -> AsyncIterator[LocalEngine]:
    eng = LocalEngine(test_models.target, max_batch=4, cache_budget_bytes=64 * 2**20)
    await eng.start()
    try:
        yield eng
    finally:
        await eng.aclose()


async def wait_until(condition: object, timeout: float = 30.0) -> None:
    async def poll() -> None:
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout)


# --- streaming and the contract ---------------------------------------------------------------


async def test_streams_the_answer_in_pieces_then_a_final_record(
    engine: LocalEngine, test_models: ModelSet
) -> None:
    assert isinstance(engine, Backend)
    events = [e async for e in checked(engine.stream(ask(FRANCE)))]
    deltas = [e for e in events if isinstance(e, TextDelta)]
    final = events[-1]
    assert len(deltas) > 1
    assert "".join(d.text for d in deltas) == said(test_models, FRANCE)
    assert isinstance(final, Final)
    assert final.finish_reason == "stop"
    assert final.backend == "local" and final.model == "target"
    usage = final.usage
    assert usage.prompt_tokens > 5
    assert usage.completion_tokens > 3
    assert usage.ttft_s is not None and usage.ttft_s > 0
    assert usage.decode_tokens_per_s is not None and usage.decode_tokens_per_s > 0
    assert usage.peak_memory_bytes is None or usage.peak_memory_bytes > 0


async def test_max_tokens_ends_with_length(engine: LocalEngine, test_models: ModelSet) -> None:
    text, final = await collect(engine.stream(ask(RIVER, max_tokens=6)))
    assert final.finish_reason == "length"
    assert final.usage.completion_tokens == 6
    assert text == said(test_models, RIVER, max_tokens=6)


async def test_stop_string_ends_the_answer_and_is_not_shown(
    engine: LocalEngine, test_models: ModelSet
) -> None:
    full = said(test_models, FRANCE)
    stop = " " + word_in(full)
    request = ChatRequest((Message("user", FRANCE),), Sampling(max_tokens=24, stop=(stop,)))
    text, final = await collect(engine.stream(request))
    assert text == full[: full.index(stop)]
    assert final.finish_reason == "stop"


async def test_continue_from_streams_only_the_new_text(
    engine: LocalEngine, test_models: ModelSet
) -> None:
    start = " ".join(said(test_models, FRANCE).split()[:3])
    request = ChatRequest((Message("user", FRANCE),), Sampling(max_tokens=24), continue_from=start)
    text, _ = await collect(engine.stream(request))
    assert not text.startswith(start)  # deltas hold only the new text
    # mlx-lm's detokenizer trims the space before a text's first word; the engine keeps it,
    # as the continuation needs it after the prefix.
    reference = mlx_greedy(test_models.target, FRANCE, max_tokens=24, prefix=start)
    assert text.lstrip() == reference.lstrip() and text[:1].isspace()


# --- batching and cancellation ----------------------------------------------------------------


async def test_a_second_request_joins_the_running_one_and_streams_before_it_ends(
    engine: LocalEngine, test_models: ModelSet
) -> None:
    order: list[tuple[str, object]] = []

    async def run(name: str, request: ChatRequest) -> str:
        parts = []
        async for event in checked(engine.stream(request)):
            order.append((name, event))
            if isinstance(event, TextDelta):
                parts.append(event.text)
        return "".join(parts)

    first = asyncio.create_task(run("river", ask(RIVER, max_tokens=200)))
    await wait_until(lambda: sum(1 for n, _ in order if n == "river") >= 3)
    # The second also ends on a stop string, which the batch path must honour too.
    dog_alone = said(test_models, DOG)
    dog_stop = " " + word_in(dog_alone)
    dog_request = ChatRequest((Message("user", DOG),), Sampling(max_tokens=24, stop=(dog_stop,)))
    second = asyncio.create_task(run("dog", dog_request))
    river, dog = await asyncio.gather(first, second)

    assert river == said(test_models, RIVER, 200)  # moving into the batch changed nothing
    assert dog == dog_alone[: dog_alone.index(dog_stop)]
    dog_first = next(i for i, (n, e) in enumerate(order) if n == "dog" and isinstance(e, TextDelta))
    river_final = next(i for i, (n, e) in enumerate(order) if n == "river" and isinstance(e, Final))
    assert dog_first < river_final


async def test_closing_a_stream_frees_its_slot_and_the_batch_mate_continues(
    engine: LocalEngine, test_models: ModelSet
) -> None:
    keep_parts: list[str] = []
    keep_done = asyncio.Event()

    async def keep() -> Final:
        final = None
        async for event in checked(engine.stream(ask(RIVER, max_tokens=200))):
            if isinstance(event, TextDelta):
                keep_parts.append(event.text)
            else:
                final = event
        keep_done.set()
        assert final is not None
        return final

    keeper = asyncio.create_task(keep())
    dropped = engine.stream(ask(RIVER, max_tokens=200))
    got = 0
    async for event in dropped:
        got += isinstance(event, TextDelta)
        if got == 3:
            break
    await dropped.aclose()
    assert engine._worker is not None
    lane = engine._worker.lanes[None]
    seen = len(keep_parts)
    # Up to two deltas may still be on their way (one delivered, one from the step that was
    # running); the step after that starts by dropping the closed stream: its slot is free.
    await wait_until(lambda: len(keep_parts) >= seen + 3 or keep_done.is_set())
    if not keep_done.is_set():
        assert lane.active == 1
        assert engine.capabilities().load.active_sequences == 1
    final = await keeper
    assert "".join(keep_parts) == said(test_models, RIVER, 200)
    assert final.finish_reason == "stop"
    await wait_until(lambda: engine.capabilities().load.active_sequences == 0)
    text, _ = await collect(engine.stream(ask(FRANCE)))
    assert text == said(test_models, FRANCE)


async def test_cancelling_a_lone_answer_keeps_its_cache_for_the_next_turn(
    engine: LocalEngine,
) -> None:
    stream = engine.stream(ask(RIVER, max_tokens=200, conversation_id="c1"))
    parts: list[str] = []
    async for event in stream:
        if isinstance(event, TextDelta):
            parts.append(event.text)
        if len(parts) == 5:
            break
    await stream.aclose()
    await wait_until(lambda: engine.capabilities().load.active_sequences == 0)
    partial = "".join(parts)
    history = (Message("user", RIVER), Message("assistant", partial), Message("user", FRANCE))
    text, final = await collect(
        engine.stream(ChatRequest(history, Sampling(max_tokens=24), conversation_id="c1"))
    )
    assert engine._worker is not None and engine._worker.main is not None
    first_prompt = len(encode_prompt(engine._worker.main.tokenizer, ask(RIVER)))
    # Reused: the first question and the part of the answer that was streamed before the cut.
    assert first_prompt < final.usage.cached_prompt_tokens < final.usage.prompt_tokens
    # The same history prefilled from scratch (no conversation id, so no kept cache) gives the
    # same greedy answer: reuse changes the cost, never the text. (What the tiny model answers
    # after a cut-off story depends on where the cut fell, so the text itself is not fixed.)
    fresh, fresh_final = await collect(engine.stream(ChatRequest(history, Sampling(max_tokens=24))))
    assert fresh_final.usage.cached_prompt_tokens == 0
    assert text == fresh


# --- KV cache reuse ---------------------------------------------------------------------------


async def test_a_follow_up_turn_prefills_only_its_new_tokens(engine: LocalEngine) -> None:
    first = ChatRequest((Message("user", FRANCE),), Sampling(max_tokens=24), conversation_id="f1")
    answer, final1 = await collect(engine.stream(first))
    history = (
        Message("user", FRANCE),
        Message("assistant", answer),
        Message("user", "What sound does a dog make?"),
    )
    second = ChatRequest(history, Sampling(max_tokens=24), conversation_id="f1")
    reply, final2 = await collect(engine.stream(second))

    u1, u2 = final1.usage, final2.usage
    assert u1.cached_prompt_tokens == 0
    # The whole first turn (prompt, answer, end-of-turn token) came from the kept cache.
    assert u2.cached_prompt_tokens == u1.prompt_tokens + u1.completion_tokens + 1
    assert u2.prompt_tokens - u2.cached_prompt_tokens < 20
    # Reuse does not change the answer.
    fresh, _ = await collect(engine.stream(ChatRequest(history, Sampling(max_tokens=24))))
    assert reply == fresh


async def test_an_edited_history_reuses_the_common_prefix_only(
    engine: LocalEngine, test_models: ModelSet
) -> None:
    system = Message("system", "Answer briefly.")
    first = ChatRequest(
        (system, Message("user", FRANCE)), Sampling(max_tokens=24), conversation_id="e1"
    )
    _, final1 = await collect(engine.stream(first))
    edited = ChatRequest(
        (system, Message("user", "What is the capital of Spain?")),
        Sampling(max_tokens=24),
        conversation_id="e1",
    )
    text, final2 = await collect(engine.stream(edited))
    spain = (("system", "Answer briefly."), ("user", "What is the capital of Spain?"))
    assert text == mlx_greedy(test_models.target, spain, max_tokens=24)
    assert 0 < final2.usage.cached_prompt_tokens < final1.usage.prompt_tokens


async def test_follow_ups_of_several_conversations_batch_together_on_their_kept_caches(
    engine: LocalEngine, test_models: ModelSet
) -> None:
    questions = {"b1": "What is the capital of Japan?", "b2": "What sound does a cow make?"}
    histories = {}
    for cid, question in questions.items():
        answer, _ = await collect(engine.stream(ask(question, conversation_id=cid)))
        histories[cid] = (
            Message("user", question),
            Message("assistant", answer),
            Message("user", "What color is the snow?"),
        )

    async def follow_up(cid: str) -> tuple[str, Final]:
        request = ChatRequest(histories[cid], Sampling(max_tokens=24), conversation_id=cid)
        return await collect(engine.stream(request))

    results = await asyncio.gather(follow_up("b1"), follow_up("b2"))
    for cid, (text, final) in zip(("b1", "b2"), results, strict=True):
        assert final.usage.cached_prompt_tokens > 0
        fresh_request = ChatRequest(histories[cid], Sampling(max_tokens=24))
        fresh, _ = await collect(engine.stream(fresh_request))
        assert text == fresh
        turns = tuple((m.role, m.content) for m in histories[cid])
        assert text == mlx_greedy(test_models.target, turns, max_tokens=24)


# --- speculative decoding ---------------------------------------------------------------------


async def test_a_draft_equal_to_the_target_has_every_proposal_accepted(
    test_models: ModelSet,
) -> None:
    spec = LocalEngine(test_models.target, draft_model=test_models.target, num_draft_tokens=3)
    try:
        text, final = await collect(spec.stream(ask(RIVER, max_tokens=40)))
    finally:
        await spec.aclose()
    usage = final.usage
    assert text == said(test_models, RIVER, max_tokens=40)
    assert usage.completion_tokens == 40
    assert usage.draft_tokens_proposed > 0
    assert usage.draft_tokens_accepted == usage.draft_tokens_proposed
    assert usage.draft_tokens_accepted == 40 - 40 // 4  # 3 drafted, 1 from the target, repeat


# --- capabilities -----------------------------------------------------------------------------


async def test_capabilities_report_the_model_and_its_load(engine: LocalEngine) -> None:
    caps = engine.capabilities()
    assert caps.model == "target"
    assert caps.context_window == 4096  # max_position_embeddings of the test model
    assert caps.load.queue_depth == 0
    assert caps.load.recent_tokens_per_s is not None
    health = await engine.health()
    assert health.ok


# --- errors -----------------------------------------------------------------------------------


async def test_a_prompt_beyond_the_context_window_is_refused(engine: LocalEngine) -> None:
    with pytest.raises(ContextTooLong) as caught:
        await collect(engine.stream(ask(FRANCE, max_tokens=5000)))
    assert caught.value.context_window == 4096
    assert "more than this model's 4096" in str(caught.value)


async def test_a_missing_folder_is_a_clear_model_error(tmp_path: Path) -> None:
    eng = LocalEngine(tmp_path / "nothing-here")
    with pytest.raises(ModelError, match="no model at"):
        await eng.start()
    assert not eng.ready
    assert not (await eng.health()).ok


async def test_an_unsupported_architecture_is_named(tmp_path: Path, test_models: ModelSet) -> None:
    folder = tmp_path / "odd"
    shutil.copytree(test_models.target, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "no-such-architecture"
    (folder / "config.json").write_text(json.dumps(config))
    eng = LocalEngine(folder)
    with pytest.raises(ModelError, match=r"no-such-architecture.*not supported"):
        await eng.start()


async def test_corrupt_weights_are_reported_not_crashed_on(
    tmp_path: Path, test_models: ModelSet
) -> None:
    folder = tmp_path / "broken"
    shutil.copytree(test_models.target, folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    eng = LocalEngine(folder)
    with pytest.raises(ModelError, match="damaged"):
        await eng.start()
    with pytest.raises(ModelError):  # later streams get the same error, not a hang
        await collect(eng.stream(ask(FRANCE)))


async def test_the_memory_guard_refuses_a_model_that_does_not_fit(test_models: ModelSet) -> None:
    eng = LocalEngine(test_models.target, available_memory_bytes=100 * 10**6)
    assert eng.capabilities().context_window == 4096  # read from config.json before loading
    with pytest.raises(ModelTooLarge) as caught:
        await eng.start()
    message = str(caught.value)
    assert "needs" in message and "GB available; try" in message


class _FailingForward:
    """Fault injection (a fake, by design): the wrapped real model raises MLX's out-of-memory
    error on one forward pass, which a tiny model on a big machine cannot be made to do."""

    def __init__(self, model: object, fail_on_call: int) -> None:
        self._model = model
        self._calls = 0
        self._fail_on = fail_on_call

    def __getattr__(self, name: str) -> object:
        return getattr(self._model, name)

    def __call__(self, *args: object, **kwargs: object) -> object:
        self._calls += 1
        if self._calls == self._fail_on:
            raise RuntimeError("[malloc] Resource limit (out of memory) exceeded")
        return self._model(*args, **kwargs)  # type: ignore[operator]


async def test_a_failure_during_generation_is_a_model_error_and_the_engine_carries_on(
    test_models: ModelSet,
) -> None:
    eng = LocalEngine(test_models.target)
    await eng.start()
    try:
        assert eng._worker is not None
        lane = eng._worker.lanes[None]
        real = lane.model
        lane.model = _FailingForward(real, fail_on_call=4)
        with pytest.raises(ModelError, match="out of memory"):
            await collect(eng.stream(ask(RIVER, max_tokens=30)))
        text, final = await collect(eng.stream(ask(FRANCE)))
        assert text == said(test_models, FRANCE)
        assert final.finish_reason == "stop"
    finally:
        await eng.aclose()


# --- adapters ---------------------------------------------------------------------------------


def _write_adapter(target: Path, folder: Path, *, rank: int = 4, broken: bool = False) -> None:
    """A LoRA adapter in mlx-lm's layout. lora_b starts at zero, so it answers like the base."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load_model

    model, _ = load_model(target)
    model.freeze()
    params = {"rank": rank, "scale": 10.0, "dropout": 0.0}
    linear_to_lora_layers(model, 2, params)
    weights = dict(tree_flatten(model.trainable_parameters()))
    if broken:  # shapes that no layer of this model has
        weights = {k: mx.zeros((v.shape[0] + 3, v.shape[-1])) for k, v in weights.items()}
    folder.mkdir(parents=True)
    mx.save_safetensors(str(folder / "adapters.safetensors"), weights)
    config = {"fine_tune_type": "lora", "num_layers": 2, "lora_parameters": params}
    (folder / "adapter_config.json").write_text(json.dumps(config))


async def test_an_adapter_request_runs_on_its_own_lane_and_a_broken_one_is_refused(
    test_models: ModelSet, tmp_path: Path
) -> None:
    _write_adapter(test_models.target, tmp_path / "zero")
    _write_adapter(test_models.target, tmp_path / "bad", broken=True)

    def resolve(name: str) -> Path:
        if not (tmp_path / name).is_dir():
            raise LookupError(f"no adapter named {name!r}; see `tandem adapters list`")
        return tmp_path / name

    eng = LocalEngine(test_models.target, adapter_resolver=resolve)
    try:
        text, final = await collect(eng.stream(ask(FRANCE, adapter="zero")))
        assert text == said(test_models, FRANCE)  # lora_b is zero: the base's answer
        assert final.adapter == "zero"
        assert eng.capabilities().adapters == ("zero",)
        with pytest.raises(ModelError, match="does not fit"):
            await collect(eng.stream(ask(FRANCE, adapter="bad")))
        with pytest.raises(ModelError, match="no adapter named 'nope'"):
            await collect(eng.stream(ask(FRANCE, adapter="nope")))
        text, final = await collect(eng.stream(ask(FRANCE)))
        assert text == said(test_models, FRANCE) and final.adapter is None
    finally:
        await eng.aclose()


async def test_closing_the_engine_ends_open_streams_with_unavailable(
    test_models: ModelSet,
) -> None:
    eng = LocalEngine(test_models.target)
    stream = eng.stream(ask(RIVER, max_tokens=200))
    first = await stream.__anext__()
    assert isinstance(first, TextDelta)
    await eng.aclose()
    with pytest.raises(Unavailable, match="shut down"):
        async for _ in stream:
            pass
    with pytest.raises(Unavailable):
        await collect(eng.stream(ask(FRANCE)))
