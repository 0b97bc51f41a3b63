"""Issue 14's findings that need no model: the key file noticed by inode, admission when vLLM's
metrics go unreadable, Retry-After rounding, the client refusing cleartext to another machine,
the contract refusing a seed the engines cannot take, private file modes on the desktop, and
the gateway's field and adapter checks on JSON values of every type and depth."""

from __future__ import annotations

import json
import logging
import os
import stat
import struct
from pathlib import Path
from typing import Any

import httpx
import pytest

from cloud.client import CloudClient
from cloud.gateway.adapters import AdapterError, BaseShape, validate_adapter
from cloud.gateway.admission import Admission, AdmissionConfig, Rejection, retry_after_header
from cloud.gateway.fields import FieldError, RequestCaps, check_generation
from cloud.gateway.keys import KeyStore
from cloud.trust import TrustError
from router.protocol import InvalidRequest, Sampling
from tests.servers import free_port


def test_a_key_file_replaced_with_the_same_size_and_mtime_is_noticed(tmp_path: Path) -> None:
    store = KeyStore(tmp_path / "keys.json")
    store.add("alice")
    reader = KeyStore(store.path)
    (before,) = reader.records()
    st = store.path.stat()
    # Another file of the same size, renamed over it, with the old mtime: only the inode differs.
    replacement = tmp_path / "other.json"
    replacement.write_text(store.path.read_text().replace(before.salt, "f" * len(before.salt)))
    os.utime(replacement, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(replacement, store.path)
    assert store.path.stat().st_size == st.st_size
    (after,) = reader.records()
    assert after.salt != before.salt


async def test_admission_is_conservative_while_vllm_metrics_are_unreadable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A closed port stands for vLLM's /metrics failing: the last load read goes stale, the
    gateway says so once and admits at most a quarter of max-in-flight."""
    config = AdmissionConfig(max_in_flight=8, per_key_concurrency=8, stale_after_s=0.0)
    admission = Admission(config, f"http://127.0.0.1:{free_port()}/metrics")
    caplog.set_level(logging.WARNING, logger="tandem.gateway")
    async with httpx.AsyncClient() as client:
        await admission.refresh(client)
    tickets = [admission.admit("k") for _ in range(3)]
    assert [isinstance(t, Rejection) for t in tickets] == [False, False, True]
    assert admission.stale and admission.poll_failures == 1
    assert sum("unreadable" in r.message for r in caplog.records) == 1


def test_retry_after_is_never_zero() -> None:
    assert [retry_after_header(s) for s in (0.0, 0.2, 0.99, 1.0, 1.01, 2.5)] == [
        "1", "1", "1", "1", "2", "3",
    ]  # fmt: skip


@pytest.mark.parametrize("url", ["http://10.0.0.5:8000", "http://llm.example.org"])
async def test_the_client_refuses_cleartext_to_another_machine(url: str) -> None:
    with pytest.raises(TrustError, match="cloud_allow_http"):
        CloudClient(url, "tdm_x")
    async with CloudClient(url, "tdm_x", allow_http=True):
        pass
    for fine in ("http://127.0.0.1:8000", "http://localhost:1", "https://llm.example.org"):
        async with CloudClient(fine, "tdm_x"):
            pass


@pytest.mark.parametrize("seed", ["x", 1.5, True, -1, 2**63, [1]])
def test_the_contract_never_passes_a_seed_an_engine_cannot_take(seed: object) -> None:
    with pytest.raises(InvalidRequest):
        Sampling(seed=seed)  # type: ignore[arg-type]


def test_sampling_refuses_wrong_types() -> None:
    for bad in ({"stop": (5,)}, {"temperature": float("nan")}, {"max_tokens": 2.5}):
        with pytest.raises(InvalidRequest):
            Sampling(**bad)  # type: ignore[arg-type]


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_conversation_store_and_exports_are_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tui.config import Config, save_config
    from tui.export import export_conversation
    from tui.store import Store

    os.umask(0o022)  # the usual umask, which made these files 0644
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path / "home"))
    data = tmp_path / "home" / "data"
    store = Store.open(data / "conversations.db")
    try:
        conv = store.create_conversation("hi")
        store.add_message(conv.id, "user", "a private question")
        assert _mode(data) == 0o700
        for suffix in ("", "-wal", "-shm"):
            file = data / f"conversations.db{suffix}"
            if file.exists():
                assert _mode(file) == 0o600, suffix
        md, js = export_conversation(store, conv.id, tmp_path / "exports")
        assert _mode(tmp_path / "exports") == 0o700
        assert _mode(md) == 0o600 and _mode(js) == 0o600
    finally:
        store.close()
    config_file = tmp_path / "home" / "config" / "config.toml"
    save_config(Config(privacy_terms=["Falconia"]), config_file)
    assert _mode(config_file) == 0o600 and _mode(config_file.parent) == 0o700


def test_serve_checks_parse_strict_json() -> None:
    from router.serve_checks import FieldError, parse_json

    for raw in (b'{"a": NaN}', b'{"a": Infinity}', b'{"a": "\\ud800"}', b'{"a": "\xff"}',
                b"[" * 100_000):  # fmt: skip
        with pytest.raises(FieldError):
            parse_json(raw)
    assert parse_json(b'{"a": "\\ud83d\\ude00"}') == {"a": "\U0001f600"}  # a pair is fine


# --- the gateway's field and adapter checks, on values of every JSON type ---------------------

_CHAT_PATH = "/v1/chat/completions"


def _chat(*messages: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"messages": list(messages) or [{"role": "user", "content": "hi"}], **extra}


def _tool(**function: Any) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "get_weather", **function}}


def _call(**overrides: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": "{}"}, **overrides}]}  # fmt: skip


@pytest.mark.parametrize(
    ("body", "param"),
    [
        # Unhashable values where a set lookup once raised TypeError (a 500).
        (_chat({"role": "user", "content": [{"type": ["text"], "text": "x"}]}), "messages"),
        (_chat({"role": ["user"], "content": "x"}), "messages"),
        (_chat(reasoning_effort=["low"]), "reasoning_effort"),
        (_chat(tool_choice=["auto"]), "tool_choice"),
        (_chat(response_format={"type": ["text"]}), "response_format"),
        (_chat(temperature=10**400), "temperature"),  # isfinite() overflowed on it
        # Nested shapes that went to vLLM unchecked.
        (_chat(tools=[{"type": "function"}]), "tools"),
        (_chat(tools=[_tool(parameters="not a schema")]), "tools"),
        (_chat(tools=[{"type": "function", "function": {"name": 5}}]), "tools"),
        (_chat(tools=[_tool(code="import os")]), "tools"),
        (_chat(tools=[{**_tool(), "extra": 1}]), "tools"),
        (_chat(tool_choice={"type": "function", "function": {"name": "f"}, "x": 1}), "tool_choice"),
        (_chat(tool_choice={"type": "function", "function": {"name": ["f"]}}), "tool_choice"),
        (_chat(tool_choice={"type": "function"}), "tool_choice"),
        (_chat(response_format={"type": "json_object", "schema": {}}), "response_format"),
        (_chat(_call(id=["call_1"])), "messages"),
        (_chat(_call(extra=1)), "messages"),
        (_chat(_call(function={"name": "f", "arguments": {"a": 1}})), "messages"),
        (_chat(_call(function={"name": "f", "arguments": "{}", "x": 1})), "messages"),
        (_chat(_call(type=["function"])), "messages"),
    ],
)
def test_the_gateway_refuses_wrong_types_and_unknown_keys_at_any_depth(
    body: dict[str, Any], param: str
) -> None:
    with pytest.raises(FieldError) as refused:
        check_generation(body, _CHAT_PATH, RequestCaps())
    assert refused.value.param == param


def test_the_gateway_forwards_well_formed_tools_as_sent() -> None:
    body = _chat(
        {"role": "user", "content": [{"type": "text", "text": "weather?"}]},
        _call(),
        {"role": "tool", "content": "sunny", "tool_call_id": "call_1"},
        tools=[_tool(description="d", parameters={"type": "object", "properties": {}})],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        response_format={"type": "json_object"},
    )
    out = check_generation(body, _CHAT_PATH, RequestCaps())
    assert {k: out[k] for k in body} == body


_BASE = BaseShape(hidden=128, intermediate=256, layers=3, heads=2, kv_heads=1, head_dim=64)
_LORA_CONFIG = json.dumps({"peft_type": "LORA", "r": 8}).encode()


def _safetensors(header: dict[str, Any], body: int = 4096) -> bytes:
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + b"\0" * body


@pytest.mark.parametrize("dtype", [[], {}, ["F32"], None, 5])
def test_an_adapter_tensor_with_a_dtype_of_the_wrong_type_is_refused(dtype: Any) -> None:
    header = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
              {"dtype": dtype, "shape": [8, 128], "data_offsets": [0, 4096]}}  # fmt: skip
    with pytest.raises(AdapterError, match="dtype") as refused:
        validate_adapter(_LORA_CONFIG, _safetensors(header), _BASE, max_rank=8)
    assert refused.value.status == 400


_DEEP = b"[" * 65536


@pytest.mark.parametrize(
    "config", [_DEEP, b'{"r": ' + _DEEP, b'{"peft_type": ' + b"[" * 500 + b"]" * 500 + b"}"]
)
def test_a_deeply_nested_adapter_config_is_refused(config: bytes) -> None:
    header = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight":
              {"dtype": "F32", "shape": [8, 128], "data_offsets": [0, 4096]}}  # fmt: skip
    with pytest.raises(AdapterError) as refused:
        validate_adapter(config, _safetensors(header), _BASE, max_rank=8)
    assert refused.value.status == 400
