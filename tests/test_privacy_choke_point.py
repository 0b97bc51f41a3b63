"""The cloud client's last check: it scans the exact body it is about to send and refuses what
the router did not clear, on every path that reaches the cloud (cloud-preferred, `/cloud`,
a pin as `tandem serve` and the chat set it, failover in both directions).

The router already keeps private requests on the device, so to reach the choke point at all
these tests blind the router's scanner (`Blind`, an injected fault: the real scanner does not
miss these texts). The cloud client is the real one, pointed at a loopback server that only
counts connections and bytes: the proof is that not one byte arrives. `Device` injects a fault
mid-answer (the real engine cannot be made to fail on cue).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from cloud.client import CloudClient
from router.hybrid import BothFailed, HybridBackend
from router.policy import RouterSettings
from router.privacy import Finding, PrivacyRefused, PrivacyScanner, clearance
from router.protocol import (
    BackendError,
    Capabilities,
    ChatRequest,
    Final,
    Health,
    Message,
    ModelError,
    Sampling,
    StreamEvent,
    TextDelta,
    Usage,
    collect,
)

CARD = "my card is 4111 1111 1111 1111"


class Blind(PrivacyScanner):
    """Injects a router fault: a scanner that finds nothing."""

    def scan(self, *_: Any, **__: Any) -> list[Finding]:
        return []

    def scan_texts(self, *_: Any, **__: Any) -> list[Finding]:
        return []


class Device:
    """The device as a fault injector: streams `pieces`, then raises `fail` if set."""

    name = "local"

    def __init__(self, pieces: list[str], fail: BackendError | None = None) -> None:
        self.pieces, self.fail = pieces, fail
        self.requests: list[ChatRequest] = []

    def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        return self._stream(request)

    async def _stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        self.requests.append(request)
        for p in self.pieces:
            yield TextDelta(p, tokens=1)
        if self.fail is not None:
            raise self.fail
        yield Final("stop", Usage(1, len(self.pieces)), self.name, "device-model")

    async def health(self) -> Health:
        return Health(ok=True)

    def capabilities(self) -> Capabilities:
        return Capabilities(model="device-model", context_window=4096)


class Listener:
    """A loopback TCP server that accepts and counts; it never answers."""

    def __init__(self) -> None:
        self.connections = 0
        self.bytes = 0

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        while data := await reader.read(65536):
            self.bytes += len(data)
        writer.close()


@asynccontextmanager
async def listening() -> AsyncIterator[tuple[Listener, str]]:
    listener = Listener()
    server = await asyncio.start_server(listener._handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield listener, f"http://127.0.0.1:{port}"
    finally:
        server.close()
        await server.wait_closed()


def _client(url: str) -> CloudClient:
    return CloudClient(url, "k", model="m", allow_http=True, first_token_timeout_s=2.0)


def _blinded(hybrid: HybridBackend, client: CloudClient) -> None:
    hybrid.policy.scanner = Blind()
    client.scanner = PrivacyScanner()  # the client keeps its own, real one


async def test_the_client_alone_refuses_private_data_and_sends_nothing() -> None:
    async with listening() as (listener, url):
        client = _client(url)
        for request in (
            ChatRequest((Message("user", CARD),)),
            ChatRequest((Message("system", "mail jane@fastmail.com"), Message("user", "hi"))),
            ChatRequest((Message("user", "go on"),), continue_from="call 415-555-2671"),
            ChatRequest((Message("user", "hi"),), Sampling(stop=("SSN 536-22-8726",))),
            ChatRequest((Message("user", "hi"),), adapter="jane.doe@fastmail.com"),
        ):
            with pytest.raises(PrivacyRefused, match="not sent to the cloud"):
                await collect(client.stream(request))
        await client.aclose()
    assert (listener.connections, listener.bytes) == (0, 0)


async def test_only_exactly_the_cleared_findings_may_pass() -> None:
    scanner = PrivacyScanner()
    request = ChatRequest((Message("user", CARD + " and mail jane@fastmail.com"),))
    found = scanner.scan_request(request)
    async with listening() as (listener, url):
        client = _client(url)
        partly = ChatRequest(request.messages, privacy_cleared=clearance(found[:1]))
        with pytest.raises(PrivacyRefused) as refused:
            await collect(client.stream(partly))
        assert refused.value.findings == tuple(found[1:])
        await client.aclose()
    assert listener.bytes == 0


@pytest.mark.parametrize(
    ("settings", "text", "pin"),
    [
        (RouterSettings(mode="cloud-preferred"), CARD, None),
        (RouterSettings(), "/cloud " + CARD, None),
        (RouterSettings(), CARD, "cloud"),  # a conversation pin, or `tandem serve`'s
    ],
)
async def test_every_path_to_the_cloud_meets_the_check(
    settings: RouterSettings, text: str, pin: Any
) -> None:
    async with listening() as (listener, url):
        client = _client(url)
        device = Device(["Sure."])
        hybrid = HybridBackend(device, client, settings)
        _blinded(hybrid, client)
        answer, final = await collect(
            hybrid.stream(ChatRequest((Message("user", text),), pin=pin))
        )
        # Refused before sending: the device answered instead, and the cloud stays healthy.
        assert (answer, final.backend) == ("Sure.", "local")
        assert final.route is not None and "not sent to the cloud" in (final.route.failover or "")
        assert hybrid.breakers["cloud"].allows()
        await client.aclose()
    assert (listener.connections, listener.bytes) == (0, 0)


async def test_a_device_failover_meets_the_check() -> None:
    async with listening() as (listener, url):
        client = _client(url)
        device = Device(["Your card ", "4111 1111 1111 1111 ", "is "], fail=ModelError("oom"))
        hybrid = HybridBackend(device, client, RouterSettings())
        _blinded(hybrid, client)
        with pytest.raises(BothFailed) as failed:
            await collect(hybrid.stream(ChatRequest((Message("user", "hi"),))))
        assert isinstance(failed.value.second, PrivacyRefused)
        await client.aclose()
    assert listener.bytes == 0


async def test_text_split_across_a_failover_is_scanned_as_one() -> None:
    """The text being continued ends "221B"; the device adds " Baker Street" and fails.
    Neither half is an address; together they are, and nothing goes to the cloud."""

    class Cloud(Device):
        name = "cloud"

    cloud = Cloud(["never"])
    device = Device([" Baker ", "Street, ", "London"], fail=ModelError("oom"))
    hybrid = HybridBackend(device, cloud, RouterSettings())
    request = ChatRequest((Message("user", "where do I live?"),), continue_from="You live at 221B")
    assert PrivacyScanner().scan_texts(["You live at 221B", " Baker Street, London"]) == []
    with pytest.raises(ModelError):
        await collect(hybrid.stream(request))
    assert cloud.requests == []


async def test_the_router_itself_keeps_private_stop_strings_and_adapter_names_local() -> None:
    class Cloud(Device):
        name = "cloud"

    email = "jane.doe@fastmail.com"
    for request in (
        ChatRequest((Message("user", "hi"),), Sampling(stop=(email,))),
        ChatRequest((Message("user", "hi"),), adapter=f"notes-{email}"),
    ):
        cloud = Cloud(["never"])
        for action in ("keep-local", "redact"):
            settings = RouterSettings(mode="cloud-preferred", privacy_action=action)
            hybrid = HybridBackend(Device(["Sure."]), cloud, settings)
            _, final = await collect(hybrid.stream(request))
            if request.adapter or action == "keep-local":
                assert final.route is not None and final.route.rule == "privacy"
                assert "email address in the " in final.route.reason
        # With redact, stop strings go out as placeholders; an adapter name never goes out.
        assert not [r for r in cloud.requests if email in repr(r)]
