"""Benchmarks of the local engine, measured side by side in one run (the last line is JSON).

    python -m scripts.bench.local                       # the test models, about 3 minutes
    python -m scripts.bench.local --model M [--draft D] # a real model as well (on a Mac)

- overhead_ratio: engine single-stream decode tokens/s ÷ plain `mlx_lm.stream_generate` on
  the same model and prompt (both timed by the consumer, first to last token; interleaved runs,
  medians). Target ≥ 0.95.
- batch_efficiency_8: aggregate tokens/s of 8 concurrent streamed requests through the engine
  ÷ mlx-lm's own `batch_generate` on the same 8 prompts and lengths. Target ≥ 0.9.
- batch_speedup_8: the same 8 requests concurrently ÷ one after another. Reported: on MLX's CPU
  build matmuls are compute-bound, so batching gains little for a model of this size.
- followup_ttft_ratio: time to first token of turn 10 of a conversation with a ~2,000-token
  history, with the engine's kept KV cache ÷ the same turn prefilled from scratch. Target ≤ 0.1.
- spec_acceptance_self (draft = target; must be 1.0) and spec_acceptance_draft (the real draft):
  accepted ÷ proposed draft tokens; spec_tokens_from_draft_*: accepted ÷ completion tokens.
- bandwidth_fraction: Apple silicon only (decode tokens/s × weight bytes ÷ the chip's memory
  bandwidth, from BANDWIDTH_GBPS); null elsewhere, with the reason in bandwidth_note.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from local.engine import LocalEngine, encode_prompt  # noqa: E402
from router.protocol import ChatRequest, Final, Message, Sampling, TextDelta  # noqa: E402
from scripts.testmodels import STORIES, build  # noqa: E402

# Memory bandwidth of Apple chips, GB/s (Apple's published figures).
BANDWIDTH_GBPS = {
    "Apple M1": 68, "Apple M1 Pro": 200, "Apple M1 Max": 400, "Apple M1 Ultra": 800,
    "Apple M2": 100, "Apple M2 Pro": 200, "Apple M2 Max": 400, "Apple M2 Ultra": 800,
    "Apple M3": 100, "Apple M3 Pro": 150, "Apple M3 Max": 400, "Apple M3 Ultra": 819,
    "Apple M4": 120, "Apple M4 Pro": 273, "Apple M4 Max": 546,
}
LONG = "Tell me about the river."
EIGHT = [
    "Tell me about the river.", "Tell me about the lighthouse.", "Tell me about the garden.",
    "Describe the river.", "Describe the lighthouse.", "Describe the garden.",
    "Tell me about the river.", "Describe the garden.",
]
TOPICS = ["the river", "the lighthouse", "the garden"]


def ask(question: str, max_tokens: int, **kw: Any) -> ChatRequest:
    return ChatRequest((Message("user", question),), Sampling(max_tokens=max_tokens), **kw)


async def timed_stream(engine: LocalEngine, request: ChatRequest) -> tuple[list[float], Final]:
    """Arrival times of each delta (consumer side) and the final record."""
    times: list[float] = []
    final = None
    async for event in engine.stream(request):
        if isinstance(event, TextDelta):
            times.append(time.perf_counter())
        else:
            final = event
    assert final is not None
    return times, final


def decode_rate(times: list[float], tokens: int) -> float:
    return (tokens - 1) / (times[-1] - times[0])


async def overhead(engine: LocalEngine, model: Any, tokenizer: Any, runs: int) -> dict[str, Any]:
    from mlx_lm import stream_generate

    request = ask(LONG, 120)
    prompt = encode_prompt(tokenizer, request)
    ours, plain = [], []
    for _ in range(runs):
        times, final = await timed_stream(engine, request)
        ours.append(decode_rate(times, final.usage.completion_tokens))
        stamps = []
        n = 0
        for response in stream_generate(model, tokenizer, prompt, max_tokens=120):
            stamps.append(time.perf_counter())
            n = response.generation_tokens
        plain.append(decode_rate(stamps, n))
    e, p = statistics.median(ours), statistics.median(plain)
    return {"overhead_ratio": round(e / p, 3), "engine_decode_tps": round(e, 1),
            "mlx_lm_decode_tps": round(p, 1)}


async def batching(
    engine: LocalEngine, model: Any, tokenizer: Any, runs: int
) -> dict[str, Any]:
    """Interleaved (engine concurrent, mlx-lm batch, engine sequential) × runs; medians, so
    that load drift on a shared machine hits all three alike."""
    from mlx_lm import batch_generate

    requests = [ask(q, 96) for q in EIGHT]
    prompts = [encode_prompt(tokenizer, r) for r in requests]
    concurrent, library, sequential = [], [], []
    engine_tokens = library_tokens = 0
    for _ in range(runs):
        start = time.perf_counter()
        results = await asyncio.gather(*(timed_stream(engine, r) for r in requests))
        engine_tokens = sum(final.usage.completion_tokens for _, final in results)
        concurrent.append(engine_tokens / (time.perf_counter() - start))

        start = time.perf_counter()
        out = batch_generate(model, tokenizer, prompts, max_tokens=96, return_token_ids=True)
        library_tokens = sum(len(ids) for ids in out.token_ids or [])
        library.append(library_tokens / (time.perf_counter() - start))

        start = time.perf_counter()
        count = 0
        for r in requests:
            _, final = await timed_stream(engine, r)
            count += final.usage.completion_tokens
        sequential.append(count / (time.perf_counter() - start))
    c, lib, seq = (statistics.median(x) for x in (concurrent, library, sequential))
    return {
        "batch_efficiency_8": round(c / lib, 3),
        "batch_speedup_8": round(c / seq, 3),
        "engine_batch8_tps": round(c, 1),
        "engine_sequential_tps": round(seq, 1),
        "mlx_lm_batch_generate_tps": round(lib, 1),
        "batch_tokens": {"engine": engine_tokens, "mlx_lm": library_tokens},
    }


async def followup(engine: LocalEngine, runs: int) -> dict[str, Any]:
    # Each user turn pastes a paragraph or two (the tiny model's own answers are short), so
    # that nine turns make a history of about 2,000 tokens.
    history: list[Message] = []
    for turn in range(9):
        topic = TOPICS[turn % 3]
        pasted = " ".join(STORIES[TOPICS[(turn + k) % 3]] for k in range(1 + turn % 2))
        history.append(Message("user", f"{pasted} Tell me about {topic}."))
        request = ChatRequest(tuple(history), Sampling(max_tokens=200), conversation_id="bench")
        parts = [e.text async for e in engine.stream(request) if isinstance(e, TextDelta)]
        history.append(Message("assistant", "".join(parts)))
    # Each run asks a different 10th question, so it shares only the history with the run
    # before it (whose cache the engine kept) and prefills its own new tokens.
    questions = ["What is the capital of France?", "What sound does a dog make?",
                 "What color is the sky?", "What is 4 plus 5?", "Hello!"]
    with_reuse, without = [], []
    prompt_tokens = cached = 0
    for i in range(runs):
        turn10 = (*history, Message("user", questions[i % len(questions)]))
        req = ChatRequest(turn10, Sampling(max_tokens=8), conversation_id="bench")
        _, final = await timed_stream(engine, req)
        with_reuse.append(final.usage.ttft_s or 0.0)
        prompt_tokens, cached = final.usage.prompt_tokens, final.usage.cached_prompt_tokens
        _, cold = await timed_stream(engine, ChatRequest(turn10, Sampling(max_tokens=8)))
        without.append(cold.usage.ttft_s or 0.0)
    a, b = statistics.median(with_reuse), statistics.median(without)
    return {"followup_ttft_ratio": round(a / b, 4), "followup_ttft_ms": round(a * 1000, 2),
            "full_prefill_ttft_ms": round(b * 1000, 2), "history_tokens": prompt_tokens,
            "cached_prompt_tokens": cached}


async def speculation(target: Path, draft: Path, label: str) -> dict[str, Any]:
    engine = LocalEngine(target, draft_model=draft, num_draft_tokens=3)
    try:
        _, final = await timed_stream(engine, ask(LONG, 120))
    finally:
        await engine.aclose()
    u = final.usage
    proposed = max(1, u.draft_tokens_proposed)
    return {
        f"spec_acceptance_{label}": round(u.draft_tokens_accepted / proposed, 3),
        f"spec_tokens_from_draft_{label}": round(u.draft_tokens_accepted / u.completion_tokens, 3),
    }


def bandwidth(weight_bytes: int, decode_tps: float) -> dict[str, Any]:
    if sys.platform != "darwin" or platform.machine() != "arm64":
        return {"bandwidth_fraction": None,
                "bandwidth_note": f"skipped: Apple silicon only (this is {platform.machine()} "
                f"{sys.platform})"}
    chip = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                          text=True).stdout.strip()
    gbps = BANDWIDTH_GBPS.get(chip)
    if gbps is None:
        return {"bandwidth_fraction": None, "bandwidth_note": f"unknown chip {chip!r}"}
    bound = gbps * 1e9 / weight_bytes
    return {"bandwidth_fraction": round(decode_tps / bound, 3), "chip": chip,
            "bandwidth_bound_tps": round(bound, 1)}


async def run(target: Path, draft: Path, runs: int) -> dict[str, Any]:
    from mlx_lm import load

    loaded = load(str(target))
    model, tokenizer = loaded[0], loaded[1]
    engine = LocalEngine(target, max_batch=8)
    await engine.start()
    result: dict[str, Any] = {"model": target.name}
    try:
        result.update(await overhead(engine, model, tokenizer, runs))
        result.update(await batching(engine, model, tokenizer, runs))
        result.update(await followup(engine, runs))
    finally:
        await engine.aclose()
    result.update(await speculation(target, target, "self"))
    result.update(await speculation(target, draft, "draft"))
    weights = sum(f.stat().st_size for f in target.glob("*.safetensors"))
    result.update(bandwidth(weights, result["engine_decode_tps"]))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--model", type=Path, help="also measure this model (with --draft)")
    parser.add_argument("--draft", type=Path, help="draft model for --model")
    parser.add_argument("--runs", type=int, default=5, help="repetitions for medians")
    args = parser.parse_args()
    models = build()
    result = asyncio.run(run(models.target, models.draft, args.runs))
    if args.model:
        result["real_model"] = asyncio.run(run(args.model, args.draft or args.model, args.runs))
    for key, value in result.items():
        print(f"{key}: {value}", file=sys.stderr)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
