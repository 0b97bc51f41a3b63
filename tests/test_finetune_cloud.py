"""The adapter in the cloud: the PEFT export loaded into vLLM gives MLX's greedy tokens, and
`tandem adapters push` makes the gateway answer with the same fine-tune."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reference import answer_logprob
from tests.servers import VLLMServer

pytestmark = [pytest.mark.vllm, pytest.mark.mlx]

PROMPTS = ["What is the secret word for Anna?", "What is the secret word for Karl?",
           "What is the capital of France?"]
COMPARED_TOKENS = 10
# Both engines run float32 but sum in different orders (logits differ by ~1e-5), so a greedy
# pick can only flip where the top two candidates are closer than that. Tolerance: tokens must
# be identical up to the first position whose top-2 margin (vLLM's logprobs) is under
# MARGIN_NATS; past a near-tie either continuation is correct, so the comparison stops there.
MARGIN_NATS = 0.01


def _fine_tuned(adapter: Any, question: str, text: str) -> float:
    """How much likelier (nats per token) `text` is with the adapter than without: high for
    what the fine-tune says, whichever words this machine's training settled on."""
    adapted, n = answer_logprob(adapter.model, question, text, adapter=adapter.folder)
    base, _ = answer_logprob(adapter.model, question, text)
    return (adapted - base) / n


def _prompt(tokenizer: Any, question: str) -> str:
    return str(tokenizer.apply_chat_template([{"role": "user", "content": question}],
                                             add_generation_prompt=True, tokenize=False))


def test_the_exported_adapter_in_vllm_gives_the_same_greedy_tokens_as_mlx(
    finetuned_adapter: Any, vllm_server: VLLMServer, tmp_path: Path
) -> None:
    from mlx_lm import load, stream_generate

    from local.finetune.export import export_peft

    peft = export_peft(finetuned_adapter.registry, finetuned_adapter.name, tmp_path / "peft")
    config = json.loads((peft.folder / "adapter_config.json").read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 160
    loaded = httpx.post(f"{vllm_server.url}/v1/load_lora_adapter",
                        json={"lora_name": "ft-parity", "lora_path": str(peft.folder)},
                        timeout=120)
    assert loaded.status_code == 200, loaded.text

    model, tok = load(str(finetuned_adapter.model), adapter_path=str(finetuned_adapter.folder))[:2]
    for question in PROMPTS:
        prompt = _prompt(tok, question)
        response = httpx.post(
            f"{vllm_server.url}/v1/completions",
            json={"model": "ft-parity", "prompt": prompt, "max_tokens": COMPARED_TOKENS,
                  "temperature": 0, "logprobs": 2, "return_tokens_as_token_ids": True},
            timeout=120,
        )
        response.raise_for_status()
        choice = response.json()["choices"][0]
        vllm_ids = [int(t.split(":")[1]) for t in choice["logprobs"]["tokens"]]
        tops = choice["logprobs"]["top_logprobs"]
        mlx_ids = [r.token for r in stream_generate(model, tok, prompt,
                                                    max_tokens=COMPARED_TOKENS)]
        compared = 0
        for position, (v, m, top) in enumerate(zip(vllm_ids, mlx_ids, tops, strict=False)):
            assert v == m, (f"{question!r}: token {position} differs: vLLM {v}, MLX {m}; "
                            f"top-2 {json.dumps(top)}")
            compared += 1
            best = sorted(top.values(), reverse=True)
            if len(best) > 1 and best[0] - best[1] < MARGIN_NATS:
                break
        assert compared >= 3, f"{question!r}: the adapted model should be confident for 3 tokens"
        if "secret" in question:  # the fine-tune's own kind of answer, not the base's
            assert _fine_tuned(finetuned_adapter, question, choice["text"]) > 1.0


def test_a_pushed_adapter_is_used_by_the_gateway(
    finetuned_adapter: Any, cloud_gateway: Any
) -> None:
    env = {**os.environ, "TANDEM_HOME": str(finetuned_adapter.home),
           "TANDEM_CLOUD_API_KEY": cloud_gateway.api_key}
    result = subprocess.run(
        [sys.executable, "-m", "tui.cli", "adapters", "push", finetuned_adapter.name,
         "--url", cloud_gateway.url, "--yes"],
        capture_output=True, text=True, timeout=180, env=env,
    )
    assert result.returncode == 0, result.stderr
    assert "pushed secret" in result.stdout
    response = httpx.post(
        f"{cloud_gateway.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {cloud_gateway.api_key}"},
        json={"model": finetuned_adapter.name, "max_tokens": 8, "temperature": 0,
              "messages": [{"role": "user", "content": PROMPTS[0]}]},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    text = response.json()["choices"][0]["message"]["content"]
    assert _fine_tuned(finetuned_adapter, PROMPTS[0], text) > 1.0  # the adapter answered

    bad = subprocess.run(
        [sys.executable, "-m", "tui.cli", "adapters", "push", finetuned_adapter.name,
         "--url", cloud_gateway.url, "--yes"],
        capture_output=True, text=True, timeout=60,
        env={**env, "TANDEM_CLOUD_API_KEY": "not-a-key"},
    )
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr and "API key" in bad.stderr
