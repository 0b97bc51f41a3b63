"""Redaction through the real thing: the chat app (Textual's pilot, the real MLX engine, the
real SQLite store) with privacy_action "redact" in cloud-preferred mode, the real cloud client,
the real gateway and vLLM. `Tap` is a loopback TCP proxy between the client and the gateway
that only records the bytes going each way (the test's eyes; it changes nothing).

What must hold on any machine, whatever the tiny model writes: the bytes that reached the
gateway hold none of the private values (and do hold their placeholders); the answer shown and
stored is exactly the cloud's text with every placeholder it repeated put back (the real
values), so a placeholder never reaches the screen or the database as such.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest

from cloud.client import CloudClient
from router.hybrid import HybridBackend
from router.privacy import PrivacyScanner
from router.protocol import ChatRequest, Message
from router.redaction import Restorer, redact
from tests.tui_support import answer, answer_views
from tui.app import TandemApp
from tui.compose import Composition, router_settings
from tui.config import Config
from tui.paths import paths
from tui.store import Store

pytestmark = [pytest.mark.mlx, pytest.mark.vllm]

CARD = "4111 1111 1111 1111"
EMAIL = "jane.doe@fastmail.com"
ADDRESS = "221B Baker Street"
PROMPT = (
    f"My card {CARD} was charged twice. I live at {ADDRESS}, London. Write a short letter "
    f"to {EMAIL} about it."
)


class Tap:
    """Forwards one loopback port to the gateway and keeps a copy of every byte."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.sent = bytearray()  # client → gateway
        self.received = bytearray()  # gateway → client

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, log: bytearray
    ) -> None:
        try:
            while data := await reader.read(65536):
                log += data
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        await asyncio.gather(
            self._pipe(reader, up_writer, self.sent),
            self._pipe(up_reader, writer, self.received),
            return_exceptions=True,
        )


def _streamed_text(raw: bytes) -> str:
    """The answer text in the SSE the gateway sent back (chunked encoding aside)."""
    text = []
    for m in re.finditer(rb'data: (\{.*?\})\r?\n', raw):
        try:
            chunk = json.loads(m.group(1))
        except ValueError:
            continue
        for choice in chunk.get("choices", []):
            text.append((choice.get("delta") or {}).get("content") or "")
    return "".join(text)


async def test_the_cloud_sees_placeholders_and_the_chat_shows_and_stores_the_values(
    tui_local_engine: Any, cloud_gateway: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    host, port = cloud_gateway.url.removeprefix("http://").rsplit(":", 1)
    tap = Tap(host, int(port))
    server = await asyncio.start_server(tap.handle, "127.0.0.1", 0)
    tapped = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    config = Config(mode="cloud-preferred", privacy_action="redact", max_tokens=24)
    try:
        async with CloudClient(tapped, cloud_gateway.api_key, model="target") as cloud:
            hybrid = HybridBackend(tui_local_engine, cloud, router_settings(config))
            composition = Composition(
                backend=hybrid, local=tui_local_engine, cloud=cloud, model_label="target"
            )
            app = TandemApp(
                store=Store.open(paths().database), config=config, composition=composition
            )
            async with app.run_test(size=(120, 40)) as pilot:
                stored = await answer(pilot, PROMPT)
                shown = answer_views(app)[-1].body_text
            app.store.close()
    finally:
        server.close()
        await server.wait_closed()

    assert stored.route is not None and stored.route.backend == "cloud", stored.route
    assert "items redacted" in stored.route.reason
    sent = bytes(tap.sent)
    assert b"/v1/chat/completions" in sent
    for value in (CARD, EMAIL, ADDRESS, "4111", "fastmail", "Baker"):
        assert value.encode() not in sent, value
    for placeholder in (b"[CARD_1]", b"[EMAIL_1]", b"[ADDRESS_1]"):
        assert placeholder in sent
    raw = _streamed_text(bytes(tap.received))
    assert raw, "the gateway streamed no text"
    values = redact(ChatRequest((Message("user", PROMPT),)), PrivacyScanner()).values
    assert set(values) == {"[CARD_1]", "[EMAIL_1]", "[ADDRESS_1]"}
    restorer = Restorer(values)
    expected = restorer.feed(raw) + restorer.flush()
    assert stored.content == expected
    assert shown.strip() == expected.strip()
    for placeholder in ("[CARD_1]", "[EMAIL_1]", "[ADDRESS_1]"):
        assert placeholder not in stored.content
    if "[CARD_1]" in raw:
        assert CARD in stored.content and CARD in shown
