"""Users' adapters through the real gateway and vLLM: upload, use, isolation, validation.

The adapter is built here (random but seeded lora_A/lora_B in the PEFT layout vLLM loads), so
these tests do not depend on the fine-tuning exporter.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from safetensors.numpy import save

from tests.cloud_servers import GatewayServer
from tests.reference import vllm_greedy

pytestmark = pytest.mark.vllm

QUESTION = "What is the capital of France?"
# The target: hidden 128, 2 heads x 64 (q/o 128), 1 kv head x 64 (k/v 64), 3 layers.
OUT_FEATURES = {"q_proj": 128, "k_proj": 64, "v_proj": 64, "o_proj": 128}


def make_adapter(
    *,
    rank: int = 8,
    seed: int = 0,
    modules: tuple[str, ...] = ("q_proj", "v_proj"),
    layers: int = 3,
    in_features: int = 128,
    alpha_per_rank: float = 16.0,
) -> tuple[bytes, bytes]:
    """(adapter_config.json, adapter_model.safetensors) for the test target."""  # fmt: skip
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for layer in range(layers):
        for module in modules:
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{module}"
            a = rng.normal(0, 0.5, (rank, in_features)).astype(np.float32)
            b = rng.normal(0, 0.5, (OUT_FEATURES[module], rank)).astype(np.float32)
            tensors[f"{prefix}.lora_A.weight"] = a
            tensors[f"{prefix}.lora_B.weight"] = b
    config = {
        "peft_type": "LORA",
        "r": rank,
        "lora_alpha": alpha_per_rank * rank,
        "target_modules": list(modules),
        "lora_dropout": 0.0,
        "bias": "none",
        "base_model_name_or_path": "target",
    }
    return json.dumps(config).encode(), save(tensors)


def upload(
    gateway: GatewayServer, key: str, name: str, config: bytes, weights: bytes,
    weights_filename: str = "adapter_model.safetensors",
) -> httpx.Response:  # fmt: skip
    return httpx.post(
        f"{gateway.url}/v1/adapters",
        headers={"Authorization": f"Bearer {key}"},
        data={"name": name},
        files={
            "adapter_config": ("adapter_config.json", config, "application/json"),
            "adapter_model": (weights_filename, weights, "application/octet-stream"),
        },
        timeout=120,
    )


def ask(gateway: GatewayServer, key: str, model: str) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/v1/chat/completions",
        headers={"Authorization": f"Bearer {key}"},
        json={
            "model": model,
            "messages": [{"role": "user", "content": QUESTION}],
            "max_tokens": 12,
            "temperature": 0,
        },
        timeout=120,
    )


def _text(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return str(data["choices"][0]["message"]["content"])


@pytest.fixture(scope="module")
def second_key(cloud_gateway: GatewayServer) -> str:
    return cloud_gateway.add_key("bob-adapters")


def test_an_uploaded_adapter_changes_the_answer_and_stays_private(
    cloud_gateway: GatewayServer, second_key: str
) -> None:
    gw, alice = cloud_gateway, cloud_gateway.api_key
    base = _text(ask(gw, alice, "target"))
    assert gw.vllm is not None  # the gateway passes vLLM's own answer on
    assert base == vllm_greedy(gw.vllm.url, gw.vllm.served_model, QUESTION, 12)

    config, weights = make_adapter()
    response = upload(gw, alice, "french-tuned", config, weights)
    assert response.status_code == 201, response.text
    assert response.json() == {"name": "french-tuned", "rank": 8}

    tuned = _text(ask(gw, alice, "french-tuned"))
    assert tuned != base

    listed = httpx.get(f"{gw.url}/v1/adapters", headers={"Authorization": f"Bearer {alice}"})
    assert [a["name"] for a in listed.json()["data"]] == ["french-tuned"]
    models = httpx.get(f"{gw.url}/v1/models", headers={"Authorization": f"Bearer {alice}"})
    assert {"target", "french-tuned"} <= {m["id"] for m in models.json()["data"]}

    # Another key neither sees nor uses it, nor can delete it.
    bob = {"Authorization": f"Bearer {second_key}"}
    assert httpx.get(f"{gw.url}/v1/adapters", headers=bob).json() == {"data": []}
    bob_models = httpx.get(f"{gw.url}/v1/models", headers=bob).json()["data"]
    assert [m["id"] for m in bob_models] == ["target"]
    refused = ask(gw, second_key, "french-tuned")
    assert refused.status_code == 404
    assert httpx.delete(f"{gw.url}/v1/adapters/french-tuned", headers=bob).status_code == 404
    # vLLM's own name for it (which embeds the owner) is not a way in either.
    internal = [m for m in httpx.get(f"{gw.vllm.url}/v1/models").json()["data"]  # type: ignore[union-attr]
                if "--french-tuned--" in m["id"]]  # owner--name--version; fmt: skip
    assert internal
    assert ask(gw, second_key, internal[0]["id"]).status_code == 404

    # The owner deletes it; then it is gone for them too.
    deleted = httpx.delete(
        f"{gw.url}/v1/adapters/french-tuned", headers={"Authorization": f"Bearer {alice}"}
    )
    assert deleted.status_code == 204
    assert ask(gw, alice, "french-tuned").status_code == 404


def test_a_revoked_key_takes_its_adapters_along_and_a_new_key_of_that_name_starts_empty(
    cloud_gateway: GatewayServer, capsys: pytest.CaptureFixture[str]
) -> None:
    from tui.commands.cloud import main as cloud_main

    gw = cloud_gateway
    carol = gw.add_key("carol-adapters")
    config, weights = make_adapter(seed=3)
    assert upload(gw, carol, "mine", config, weights).status_code == 201
    first = _text(ask(gw, carol, "mine"))

    revoke = ["keys", "--keys-file", str(gw.keys_file), "revoke", "carol-adapters"]
    assert cloud_main([*revoke, "--adapters-dir", str(gw.adapters_dir)]) == 0
    assert "1 adapter(s) uploaded with it deleted" in capsys.readouterr().err
    assert ask(gw, carol, "mine").status_code == 401

    # The same name issued again (to whoever): none of the old key's adapters.
    again = gw.add_key("carol-adapters")
    listed = httpx.get(f"{gw.url}/v1/adapters", headers={"Authorization": f"Bearer {again}"})
    assert listed.json() == {"data": []}
    assert ask(gw, again, "mine").status_code == 404
    # Its own upload under the same adapter name is its own weights, not the copy vLLM may
    # still hold for the revoked key.
    config, weights = make_adapter(seed=4)
    assert upload(gw, again, "mine", config, weights).status_code == 201
    assert _text(ask(gw, again, "mine")) != first


@pytest.mark.parametrize(
    ("change", "status", "message"),
    [
        ({"rank": 16}, 400, "exceeds this server's maximum of 8"),
        ({"in_features": 96}, 400, "expected [8, 128]"),
        ({"layers": 4}, 400, "the base model has 3 layers"),
        ({"filename": "adapter_model.bin"}, 415, "only .safetensors"),
        ({"not_safetensors": True}, 400, "not a safetensors file"),
        ({"name": "Bad Name"}, 400, "adapter names are"),
        ({"dora": True}, 400, "DoRA"),
    ],
)
def test_invalid_uploads_are_refused_with_a_clear_message(
    cloud_gateway: GatewayServer, change: dict[str, Any], status: int, message: str
) -> None:
    config, weights = make_adapter(
        rank=change.get("rank", 8),
        in_features=change.get("in_features", 128),
        layers=change.get("layers", 3),
    )
    if change.get("dora"):
        config = json.dumps({**json.loads(config), "use_dora": True}).encode()
    if change.get("not_safetensors"):
        weights = b"\x80\x04pickle" + weights
    response = upload(
        cloud_gateway, cloud_gateway.api_key, change.get("name", "bad-one"), config, weights,
        change.get("filename", "adapter_model.safetensors"),
    )  # fmt: skip
    assert response.status_code == status, response.text
    assert message in response.json()["error"]["message"]


def test_an_oversize_upload_is_refused(cloud_gateway: GatewayServer) -> None:
    config, _ = make_adapter()
    response = upload(cloud_gateway, cloud_gateway.api_key, "huge", config, b"\0" * (2**20 + 1))
    assert response.status_code == 413
    assert "larger than" in response.json()["error"]["message"]


def test_uploads_need_a_key(cloud_gateway: GatewayServer, tmp_path: Path) -> None:
    config, weights = make_adapter()
    assert upload(cloud_gateway, "tdm_wrong", "x", config, weights).status_code == 401


def test_more_adapters_than_vllm_holds_at_once_all_keep_answering(
    cloud_gateway: GatewayServer,
) -> None:
    """The cpu profile lets vLLM hold 4 adapters at once (`max-loras`); six uploaded adapters
    all answer, each the same as right after its upload (vLLM swaps them in and out)."""
    gw = cloud_gateway
    key = gw.add_key("many-adapters")
    first: dict[str, str] = {}
    for i in range(6):
        config, weights = make_adapter(seed=10 + i)
        assert upload(gw, key, f"a{i}", config, weights).status_code == 201
        first[f"a{i}"] = _text(ask(gw, key, f"a{i}"))
    assert len(set(first.values())) > 1  # they are different adapters
    for name, answer in first.items():
        assert _text(ask(gw, key, name)) == answer, name
