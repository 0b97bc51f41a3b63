"""The desktop's cloud client against the real gateway and vLLM: the Backend contract, and each
failure mapped to its typed error."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from cloud.client import CloudClient
from router.protocol import (
    Backend,
    ChatRequest,
    ContextTooLong,
    Message,
    Sampling,
    TextDelta,
    Unauthorized,
    Unavailable,
    collect,
)
from scripts.testmodels import ModelSet
from tests.cloud_servers import GatewayServer, start_gateway
from tests.reference import vllm_greedy, word_in
from tests.servers import free_port

FRANCE = "What is the capital of France?"


def _said(gateway: GatewayServer, question: str, max_tokens: int = 24, prefix: str = "") -> str:
    """vLLM's own greedy answer, asked directly: what the client must pass on unchanged (the
    test model is trained on this machine, so the text itself is never fixed here)."""
    assert gateway.vllm is not None
    return vllm_greedy(gateway.vllm.url, gateway.vllm.served_model, question, max_tokens,
                       prefix=prefix)


def _ask(question: str, **sampling: object) -> ChatRequest:
    return ChatRequest((Message("user", question),), Sampling(**{"max_tokens": 24, **sampling}))  # type: ignore[arg-type]


@pytest_asyncio.fixture(loop_scope="session")
async def client(cloud_gateway: GatewayServer) -> AsyncIterator[CloudClient]:
    async with CloudClient(cloud_gateway.url, cloud_gateway.api_key) as c:
        yield c


@pytest.mark.vllm
async def test_streams_an_answer_with_a_final_record(
    client: CloudClient, cloud_gateway: GatewayServer
) -> None:
    assert isinstance(client, Backend)
    health = await client.health()
    assert health.ok, health.detail
    caps = client.capabilities()
    assert caps.model == "target" and caps.context_window == 4096
    deltas: list[str] = []
    async for event in client.stream(_ask("What is the capital of France?")):
        if isinstance(event, TextDelta):
            deltas.append(event.text)
    assert len(deltas) > 1
    text, final = await collect(client.stream(_ask("What is the capital of France?")))
    assert text == "".join(deltas) == _said(cloud_gateway, FRANCE)
    assert final.finish_reason == "stop" and final.backend == "cloud" and final.model == "target"
    assert final.usage.prompt_tokens > 0 and final.usage.completion_tokens > 1
    assert final.usage.ttft_s is not None and final.usage.ttft_s > 0


@pytest.mark.vllm
async def test_stop_strings_and_max_tokens(
    client: CloudClient, cloud_gateway: GatewayServer
) -> None:
    full = _said(cloud_gateway, FRANCE)
    stop = word_in(full)
    text, final = await collect(client.stream(_ask(FRANCE, stop=(stop,))))
    assert text == full[: full.index(stop)] and final.finish_reason == "stop"
    text, final = await collect(client.stream(_ask("Tell me about the river.", max_tokens=3)))
    assert final.finish_reason == "length" and final.usage.completion_tokens == 3


@pytest.mark.vllm
async def test_continues_a_partial_assistant_message(
    client: CloudClient, cloud_gateway: GatewayServer
) -> None:
    start = " ".join(_said(cloud_gateway, FRANCE).split()[:3])
    request = ChatRequest((Message("user", FRANCE),), Sampling(max_tokens=16),
                          continue_from=start)
    text, final = await collect(client.stream(request))
    assert not text.startswith(start)  # deltas hold only the new text
    assert text == _said(cloud_gateway, FRANCE, 16, prefix=start)
    assert final.finish_reason == "stop"


@pytest.mark.vllm
async def test_closing_the_stream_frees_the_slot_and_connections_are_reused(
    client: CloudClient, cloud_gateway: GatewayServer
) -> None:
    stream = client.stream(_ask("Tell me about the river.", max_tokens=200))
    assert isinstance(await anext(stream), TextDelta)
    await stream.aclose()
    for _ in range(100):
        if cloud_gateway.gateway_metrics()["tandem_gateway_in_flight"] == 0:
            break
        await asyncio.sleep(0.1)
    assert cloud_gateway.gateway_metrics()["tandem_gateway_in_flight"] == 0
    # Two answers one after the other travel over one pooled keep-alive connection.
    async with CloudClient(cloud_gateway.url, cloud_gateway.api_key, model="target") as fresh:
        for _ in range(2):
            await collect(fresh.stream(_ask("What sound does a dog make?")))
        pool = fresh._http._transport._pool  # type: ignore[attr-defined]
        assert len(pool.connections) == 1


@pytest.mark.vllm
async def test_a_wrong_key_is_unauthorized(cloud_gateway: GatewayServer) -> None:
    async with CloudClient(cloud_gateway.url, "tdm_not-a-key", model="target") as c:
        with pytest.raises(Unauthorized):
            await collect(c.stream(_ask("hi")))
        health = await c.health()
        assert not health.ok and "key" in health.detail


@pytest.mark.vllm
async def test_an_over_long_prompt_is_context_too_long(client: CloudClient) -> None:
    with pytest.raises(ContextTooLong) as caught:
        await collect(client.stream(_ask("river " * 6000)))
    assert caught.value.context_window == 4096


async def test_nothing_listening_is_unavailable() -> None:
    async with CloudClient(f"http://127.0.0.1:{free_port()}", "k", model="target") as c:
        with pytest.raises(Unavailable, match="cannot reach"):
            await collect(c.stream(_ask("hi")))
        assert not (await c.health()).ok


@pytest.fixture(scope="module")
def gateway_without_engine(
    test_models: ModelSet, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    """A real gateway whose vLLM is not running (a stopped engine behind a live gateway)."""
    gateway = start_gateway(
        None, Path(tmp_path_factory.mktemp("no-engine")), model_dir=test_models.target,
        upstream_url=f"http://127.0.0.1:{free_port()}",
    )  # fmt: skip
    try:
        yield gateway
    finally:
        gateway.stop()


async def test_a_gateway_without_its_engine_is_unavailable(
    gateway_without_engine: GatewayServer,
) -> None:
    gw = gateway_without_engine
    async with CloudClient(gw.url, gw.api_key, model="target") as c:
        with pytest.raises(Unavailable, match="503"):
            await collect(c.stream(_ask("hi")))
        health = await c.health()
        assert not health.ok and "not ready" in health.detail


# --- faults a real server cannot be made to show on demand ----------------------------------

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
)
ONE_CHUNK = b'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}\n\n'


@contextlib.asynccontextmanager
async def fault_server(mode: str) -> AsyncIterator[str]:
    """A FAKE HTTP server for faults only: it answers one SSE chunk and then resets the
    connection ("reset"), or sends headers and then nothing ("stall"), or one chunk and then
    nothing ("stall-after-first"). Real vLLM cannot be made to do these at a chosen moment."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(SSE_HEAD)
        if mode != "stall":
            writer.write(b"%x\r\n%s\r\n" % (len(ONE_CHUNK), ONE_CHUNK))
        await writer.drain()
        if mode == "reset":
            writer.transport.abort()
            return
        await asyncio.sleep(30)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1)


async def test_a_connection_reset_mid_answer_is_unavailable_after_the_text_so_far() -> None:
    async with fault_server("reset") as url, CloudClient(url, "k", model="m") as c:
        received: list[str] = []
        with pytest.raises(Unavailable, match="lost mid-answer"):
            async for event in c.stream(_ask("hi")):
                if isinstance(event, TextDelta):
                    received.append(event.text)
        assert received == ["Hel"]


@pytest.mark.parametrize(
    ("mode", "what"), [("stall", "first token"), ("stall-after-first", "next token")]
)
async def test_stalls_hit_the_first_token_and_idle_timeouts(mode: str, what: str) -> None:
    async with (
        fault_server(mode) as url,
        CloudClient(url, "k", model="m", first_token_timeout_s=0.5, idle_timeout_s=0.5) as c,
    ):
        with pytest.raises(Unavailable, match=what):
            await collect(c.stream(_ask("hi")))
