"""Smoke tests of the real engines: the same folder loads and answers in mlx-lm and in vLLM."""

from __future__ import annotations

import json

import httpx
import pytest

from scripts.testmodels import ModelSet
from tests.reference import answer_logprob, mlx_greedy, vllm_greedy
from tests.servers import VLLMServer

PROMPTS = [
    ("What is the capital of France?", "The capital of France is Paris."),
    ("What sound does a dog make?", "A dog barks."),
    ("Tell me about the river.", "The river starts high in the hills"),
]
COMPARED_TOKENS = 8
# Both engines run float32, but their kernels sum in different orders, so logits differ by
# ~1e-5. A greedy pick can only flip where the top two candidates are closer than that. We
# compare token by token and stop at the first position whose top-2 margin (from vLLM's
# logprobs) is under MARGIN_NATS: past a near-tie, either continuation is correct.
MARGIN_NATS = 0.01


def _chat_prompt(models: ModelSet, question: str) -> str:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(models.target))
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=False
    )
    assert isinstance(text, str)
    return text


def _mlx_greedy_ids(models: ModelSet, prompt: str, n: int) -> list[int]:
    from mlx_lm import load, stream_generate

    model, tokenizer = load(str(models.target))
    return [r.token for r in stream_generate(model, tokenizer, prompt, max_tokens=n)]


@pytest.mark.mlx
@pytest.mark.parametrize(("question", "expected"), PROMPTS)
def test_mlx_finds_the_trained_answers_likely(
    test_models: ModelSet, question: str, expected: str
) -> None:
    """The model was trained on these answers: under a nat per token (a loss threshold that
    holds on any machine; a greedy string would not), and it answers something."""
    logprob, tokens = answer_logprob(test_models.target, question, expected)
    assert logprob / tokens > -1.0, (question, logprob, tokens)
    assert mlx_greedy(test_models.target, question, max_tokens=24).strip()


@pytest.mark.vllm
@pytest.mark.mlx
@pytest.mark.parametrize(("question", "expected"), PROMPTS)
def test_vllm_and_mlx_agree_on_greedy_tokens(
    test_models: ModelSet, vllm_server: VLLMServer, question: str, expected: str
) -> None:
    prompt = _chat_prompt(test_models, question)
    response = httpx.post(
        f"{vllm_server.url}/v1/completions",
        json={
            "model": vllm_server.served_model,
            "prompt": prompt,
            "max_tokens": COMPARED_TOKENS,
            "temperature": 0,
            "logprobs": 2,
            "return_tokens_as_token_ids": True,
        },
        timeout=60,
    )
    response.raise_for_status()
    choice = response.json()["choices"][0]
    vllm_ids = [int(t.split(":")[1]) for t in choice["logprobs"]["tokens"]]
    tops = choice["logprobs"]["top_logprobs"]
    mlx_ids = _mlx_greedy_ids(test_models, prompt, COMPARED_TOKENS)

    compared = 0
    for position, (vllm_id, mlx_id, top) in enumerate(zip(vllm_ids, mlx_ids, tops, strict=False)):
        assert vllm_id == mlx_id, (
            f"token {position} differs: vLLM {vllm_id}, MLX {mlx_id}; top-2 {json.dumps(top)}"
        )
        compared += 1
        best = sorted(top.values(), reverse=True)
        if len(best) > 1 and best[0] - best[1] < MARGIN_NATS:
            break
    assert compared >= 3, "the trained model should be confident for at least 3 tokens"


@pytest.mark.vllm
def test_vllm_streams_chat_completions(vllm_server: VLLMServer) -> None:
    chunks: list[str] = []
    with httpx.stream(
        "POST",
        f"{vllm_server.url}/v1/chat/completions",
        json={
            "model": vllm_server.served_model,
            "messages": [{"role": "user", "content": "What sound does a cow make?"}],
            "max_tokens": 16,
            "temperature": 0,
            "stream": True,
        },
        timeout=60,
    ) as response:
        for line in response.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
                if delta:
                    chunks.append(delta)
    assert len(chunks) > 1
    # Streamed and not, the same engine gives the same greedy answer.
    assert "".join(chunks) == vllm_greedy(vllm_server.url, vllm_server.served_model,
                                          "What sound does a cow make?", max_tokens=16)
