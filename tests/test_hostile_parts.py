"""Issue 14's findings that need no model: the key file noticed by inode, admission when vLLM's
metrics go unreadable, Retry-After rounding, the client refusing cleartext to another machine,
the contract refusing a seed the engines cannot take, and private file modes on the desktop."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import httpx
import pytest

from cloud.client import CloudClient
from cloud.gateway.admission import Admission, AdmissionConfig, Rejection, retry_after_header
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
