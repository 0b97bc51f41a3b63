"""The engine's scheduler on its own (local/scheduler.py): admission, single stream vs batch,
chunked prefill and cancellation, decided without MLX. The sequences here are plain records:
the scheduler reads nothing else of a sequence (`cancelled`, `prefill_left`)."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

from local.scheduler import Mode, Scheduler, SeqStatus

CHUNK = 8


@dataclass(eq=False)
class Seq:
    name: str
    prefill_left: int = 3
    cancelled: bool = False
    status: SeqStatus = SeqStatus.WAITING


def step(s: Scheduler[Seq]) -> tuple[list[Seq], object]:
    """One scheduling step the way the worker runs it (the runner's prefill is simulated:
    a chunk takes CHUNK tokens off the prompt, and `begin` found no kept cache)."""
    gone = s.reap()
    s.admit()
    plan = s.place()
    if plan.chunk is not None:
        plan.chunk.prefill_left -= CHUNK
    return gone, plan


def test_a_lone_request_runs_on_the_single_stream() -> None:
    s: Scheduler[Seq] = Scheduler(max_batch=4, chunk_tokens=CHUNK)
    a = Seq("a")
    s.add(a)
    _, plan = step(s)
    assert plan.single is a and plan.decode is Mode.SINGLE and not plan.insert
    assert a.status is SeqStatus.RUNNING and s.active == 1 and s.queue_depth == 0


def test_an_arrival_moves_the_single_stream_into_the_batch_with_it() -> None:
    s: Scheduler[Seq] = Scheduler(max_batch=4, chunk_tokens=CHUNK)
    a, b = Seq("a"), Seq("b")
    s.add(a)
    step(s)
    s.add(b)
    _, plan = step(s)
    assert plan.to_batch and plan.insert == [b] and plan.decode is Mode.BATCH
    assert s.single is None and s.batched == [a, b]


def test_requests_arriving_together_start_as_a_batch() -> None:
    s: Scheduler[Seq] = Scheduler(max_batch=4, chunk_tokens=CHUNK)
    seqs = [Seq(str(i)) for i in range(3)]
    for seq in seqs:
        s.add(seq)
    _, plan = step(s)
    assert plan.single is None and plan.insert == seqs and plan.decode is Mode.BATCH


def test_past_max_batch_requests_wait_in_order_and_are_the_queue_depth() -> None:
    s: Scheduler[Seq] = Scheduler(max_batch=2, chunk_tokens=CHUNK)
    seqs = [Seq(str(i)) for i in range(5)]
    for seq in seqs:
        s.add(seq)
    step(s)
    assert s.active == 2 and s.queue_depth == 3
    assert list(s.waiting) == seqs[2:]
    s.finish(seqs[0])
    _, plan = step(s)
    assert plan.insert == [seqs[2]] and s.queue_depth == 2


def test_with_max_batch_one_everything_is_single_and_in_turn() -> None:
    s: Scheduler[Seq] = Scheduler(max_batch=1, chunk_tokens=CHUNK)
    a, b = Seq("a"), Seq("b")
    s.add(a)
    s.add(b)
    _, plan = step(s)
    assert plan.single is a and s.queue_depth == 1
    _, plan = step(s)
    assert plan.single is None and not plan.to_batch and plan.decode is Mode.SINGLE
    s.finish(a)
    _, plan = step(s)
    assert plan.single is b


def test_a_long_prompt_is_prefilled_a_chunk_per_step_between_decode_steps() -> None:
    s: Scheduler[Seq] = Scheduler(max_batch=4, chunk_tokens=CHUNK)
    short, long = Seq("short"), Seq("long", prefill_left=3 * CHUNK + 1)
    s.add(short)
    step(s)  # the short one runs alone
    s.add(long)
    chunks = 0
    while True:
        _, plan = step(s)
        assert plan.decode is not None  # the running answer keeps decoding meanwhile
        if plan.chunk is long:
            chunks += 1
            assert not plan.to_batch  # the single stream keeps its draft model meanwhile
        if long in plan.insert:
            break
    assert chunks == 3 and plan.to_batch and s.batched == [short, long]


def test_a_cancelled_prefill_stops_between_chunks() -> None:
    s: Scheduler[Seq] = Scheduler(max_batch=4, chunk_tokens=CHUNK)
    long = Seq("long", prefill_left=10 * CHUNK)
    s.add(long)
    step(s)
    long.cancelled = True
    gone, plan = step(s)
    assert gone == [long] and plan.chunk is None and plan.decode is None
    assert long.status is SeqStatus.FINISHED and not s.has_work()


@pytest.mark.parametrize("where", ["waiting", "single", "batched"])
def test_cancellation_takes_a_sequence_out_wherever_it_is(where: str) -> None:
    s: Scheduler[Seq] = Scheduler(max_batch=1 if where == "waiting" else 4, chunk_tokens=CHUNK)
    a, b = Seq("a"), Seq("b")
    s.add(a)
    step(s)
    if where != "single":
        s.add(b)
        step(s)
    victim = b if where == "waiting" else a
    victim.cancelled = True
    gone, _ = step(s)
    assert gone == [victim] and victim.status is SeqStatus.FINISHED
    assert victim not in s.all()


def test_the_batch_runs_until_it_is_empty_then_a_lone_request_is_single_again() -> None:
    s: Scheduler[Seq] = Scheduler(max_batch=4, chunk_tokens=CHUNK)
    a, b = Seq("a"), Seq("b")
    s.add(a)
    s.add(b)
    step(s)
    s.finish(a)
    _, plan = step(s)
    assert plan.decode is Mode.BATCH  # b stays in the batch
    s.finish(b)
    c = Seq("c")
    s.add(c)
    _, plan = step(s)
    assert plan.single is c


def test_the_scheduler_imports_no_mlx() -> None:
    source = (Path(__file__).parent.parent / "local" / "scheduler.py").read_text()
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"mlx", "mlx_lm", "numpy", "local"}
