"""Does a second replica pay? Output tokens/s of 2 pinned replicas ÷ 1 pinned replica.

    python -m scripts.bench.scale          # a few minutes; the last line is one JSON object

Both deployments are `tandem cloud serve` on the cpu profile with the test target model: one
replica pinned to core 0 (on its private socket, no router), then two replicas pinned to cores
0 and 1 behind vllm-router. The same load goes through the gateway each time: vLLM's own load
generator (`vllm.benchmarks.serve`'s `benchmark`), 32 concurrent streams, every answer
`--output-len` tokens (ignore_eos), `--prompts` requests in all.

- replica_throughput_ratio: output tokens/s with two replicas ÷ with one. Target ≥ 1.8.
  The gateway, the router and the load generator run on the same two cores as the replicas,
  so this machine understates what two GPUs (or two nodes) would show.

The model: the tiny test target decodes thousands of tokens/s, so its load is all HTTP and
Python (API servers, router, gateway, load generator), which a second core-pinned replica
cannot speed up. The default is therefore a wider model of the same family (the target's
tokenizer, untrained weights, ~200M parameters, built once into .cache/), whose decoding is
compute, as a real model's is; `--model target` measures the tiny one anyway.
The router takes turns by default here (`--router-policy`): with cache_aware, every one of
these chats matched the same cached prefix (the chat template) and all 32 went to one
replica: ratios of 1.16 (decode) and 1.18 (`--prompt-words 100`) measured that, not scaling.
Taking turns, two runs measured 1.64 and 1.62 (131 → 212 tokens/s): short of 1.8 because the
gateway, the router and the load generator (Python, per token) had the second core to
themselves beside one replica, and must share both cores with two.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from scripts.testmodels import build  # noqa: E402
from tests.replica_servers import start_replicated_cloud  # noqa: E402

WORDS = ["river", "mountain", "city", "garden", "ocean", "forest", "bridge", "castle"]


WIDE = {"hidden_size": 1536, "num_hidden_layers": 8, "num_attention_heads": 24,
        "num_key_value_heads": 8, "intermediate_size": 4096, "head_dim": 64}  # fmt: skip


def wide_model(target: Path) -> Path:
    """The target's tokenizer with an untrained, wider Llama (built once, cached)."""
    import shutil

    folder = target.parent / "wide-bench"
    if (folder / "config.json").is_file():
        return folder
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    staging = target.parent / "wide-bench.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(target, staging, ignore=shutil.ignore_patterns("*.safetensors", "*.json"))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "generation_config.json"):  # fmt: skip
        if (target / name).is_file():
            shutil.copy(target / name, staging / name)
    config = {**json.loads((target / "config.json").read_text()), **WIDE}
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**config)).float()
    model.save_pretrained(staging, safe_serialization=True)
    saved = json.loads((staging / "config.json").read_text())
    saved.update({"torch_dtype": "float32", "dtype": "float32"})
    (staging / "config.json").write_text(json.dumps(saved, indent=2))
    staging.rename(folder)
    return folder


def run_load(
    url: str, key: str, tokenizer_dir: Path, prompts: int, output_len: int, concurrency: int,
    prompt_words: int = 0,
) -> dict[str, Any]:
    """`prompts` chat requests, `concurrency` at a time, through vLLM's load generator."""
    from transformers import AutoTokenizer
    from vllm.benchmarks.datasets import SampleRequest
    from vllm.benchmarks.serve import TaskType, benchmark

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    requests = []
    for i in range(prompts):
        # Distinct prompts: a cache-aware router spreads them by load, not by a shared prefix.
        text = f"Request {i}: tell me a long story about the {WORDS[i % len(WORDS)]}."
        text += "".join(f" {WORDS[(i + j) % len(WORDS)]}" for j in range(prompt_words))
        requests.append(
            SampleRequest(
                prompt=text,
                prompt_len=len(tokenizer(text)["input_ids"]),
                expected_output_len=output_len,
                chat_messages=[{"role": "user", "content": text}],
            )
        )
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
            num_warmups=2,
            profile=False,
            selected_percentile_metrics=["ttft", "tpot"],
            selected_percentiles=[50.0],
            ignore_eos=True,
            goodput_config_dict={},
            max_concurrency=concurrency,
            lora_modules=None,
            extra_headers={"Authorization": f"Bearer {key}"},
            extra_body={"temperature": 0},
        )
    )


def measure(replicas: int, folder: Path, args: argparse.Namespace, model: Path) -> dict[str, Any]:
    cores = ((0,), (1,))[:replicas]
    cloud = start_replicated_cloud(
        model, folder, replicas=replicas, cores=cores,
        gateway_args=[
            "--router-policy", args.router_policy,
            # The load, not admission, is under test: room for every stream at once.
            "--per-key-concurrency", "256", "--max-in-flight", "256", "--max-waiting", "100000",
            "--rate-per-second", "10000", "--burst", "10000", "--max-queue-wait-s", "0",
        ],
    )  # fmt: skip
    try:
        result = run_load(
            cloud.url, cloud.api_key, model, args.prompts, args.output_len, args.concurrency,
            args.prompt_words,
        )
    finally:
        cloud.stop()
    return {
        "output_tokens_per_s": result["output_throughput"],
        "completed": result["completed"],
        "median_ttft_ms": result.get("median_ttft_ms"),
        "median_tpot_ms": result.get("median_tpot_ms"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--model", choices=("wide", "target"), default="wide",
                        help="the ~200M-parameter untrained model (default) or the tiny target")
    parser.add_argument(
        "--router-policy", default="round_robin",
        help="vllm-router's policy (default round_robin: the chats here share the chat "
        "template's prefix, so cache_aware keeps them all on one replica until the loads "
        "differ by its --balance-abs-threshold, 64 requests, more than this load ever has)",
    )  # fmt: skip
    parser.add_argument("--prompt-words", type=int, default=0,
                        help="words added to each prompt (long prompts: prefill, i.e. compute)")
    args = parser.parse_args()
    target = build().target
    model = wide_model(target) if args.model == "wide" else target
    with tempfile.TemporaryDirectory(prefix="tandem-bench-scale-") as tmp:
        one = measure(1, Path(tmp) / "one", args, model)
        print(f"1 replica:  {json.dumps(one)}", file=sys.stderr)
        two = measure(2, Path(tmp) / "two", args, model)
        print(f"2 replicas: {json.dumps(two)}", file=sys.stderr)
    ratio = two["output_tokens_per_s"] / one["output_tokens_per_s"]
    print(json.dumps({
        "replica_throughput_ratio": round(ratio, 3),
        "target": 1.8,
        "one_replica": one,
        "two_replicas": two,
        "concurrency": args.concurrency,
        "prompts": args.prompts,
        "output_len": args.output_len,
        "model": args.model,
        "prompt_words": args.prompt_words,
        "router_policy": args.router_policy,
    }))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
