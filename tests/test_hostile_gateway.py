"""The gateway against hostile input, on the real gateway in front of the real vLLM.

A property-based suite (hypothesis) throws wrong types, NaN/Infinity, lone surrogates,
unknown and vLLM-internal fields, invalid UTF-8 and bodies past the cap at it; every case must
be a 4xx with a JSON error, never a 5xx, the log must hold only ids and counts, and afterwards
a normal request succeeds and the in-flight count is back to 0. Then one test per finding of
issue 14: leaked admission slots, chunked bodies, caps, tenants' prefix cache, slow clients,
revoked keys, adapters (quotas, atomic replace, malformed headers, no server paths), Retry-After.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cloud.gateway.adapters import AdapterStore, BaseShape
from cloud.gateway.admission import parse_metrics
from cloud.gateway.fields import CHAT as CHAT_FIELDS
from cloud.gateway.fields import COMPLETION as COMPLETION_FIELDS
from cloud.gateway.keys import KeyStore
from scripts.testmodels import ModelSet
from tests.cloud_servers import GatewayServer, start_gateway
from tests.servers import VLLMServer, free_port
from tests.test_cloud_adapters import make_adapter, upload

pytestmark = pytest.mark.vllm

CANARY = "Zebracanary"  # in every hostile prompt: it must never reach the gateway's log
CHAT = "/v1/chat/completions"
ACCEPTED = set(CHAT_FIELDS) | set(COMPLETION_FIELDS)
HYPOTHESIS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,  # the same examples on every machine and run: no flaky CI
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _ok_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "target",
        "messages": [{"role": "user", "content": f"Say hi {CANARY}"}],
        "max_tokens": 4,
        "temperature": 0,
        **extra,
    }


def _in_flight(gw: GatewayServer) -> float:
    return gw.gateway_metrics()["tandem_gateway_in_flight"]


def _wait_idle(gw: GatewayServer, timeout_s: float = 30.0) -> float:
    deadline = time.monotonic() + timeout_s
    while (n := _in_flight(gw)) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    return n


def _wait_for_log(gw: GatewayServer, text: str, timeout_s: float = 30.0) -> bool:
    """The log line is written when the relay has finished, just after the client saw the end."""
    deadline = time.monotonic() + timeout_s
    while text not in gw.log() and time.monotonic() < deadline:
        time.sleep(0.2)
    return text in gw.log()


def _assert_json_4xx(response: httpx.Response) -> None:
    assert 400 <= response.status_code < 500, (response.status_code, response.text[:300])
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"]


# --- the property-based suite -----------------------------------------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
_NOT_INT = st.text(max_size=5) | st.floats(allow_nan=False) | st.booleans() | st.lists(
    st.integers(), max_size=2
)
# For each accepted field, values it must refuse (wrong type, out of range, over a cap).
_BAD_FIELD = st.one_of(
    st.tuples(st.just("messages"), st.one_of(st.text(max_size=5), st.integers(), st.just([]),
              st.lists(st.integers(), min_size=1, max_size=2),
              st.just([{"role": "robot", "content": "x"}]),
              st.just([{"role": "user", "content": [{"type": "image_url",
                                                     "image_url": {"url": "http://x/"}}]}]),
              st.just([{"role": "user", "content": "x", "extra": 1}]))),
    st.tuples(st.just("max_tokens"), _NOT_INT | st.integers(max_value=0)
              | st.integers(min_value=4097)),
    st.tuples(st.just("n"), _NOT_INT | st.integers(max_value=0) | st.integers(min_value=5)),
    st.tuples(st.just("temperature"), st.text(max_size=3) | st.booleans()
              | st.floats(min_value=2.01, allow_infinity=False) | st.floats(max_value=-0.01)),
    st.tuples(st.just("top_p"), st.just(0) | st.floats(min_value=1.01, allow_infinity=False)),
    st.tuples(st.just("stop"), st.integers() | st.lists(st.integers(), min_size=1, max_size=2)
              | st.just([""]) | st.just(["x"] * 9)),
    st.tuples(st.just("seed"), st.text(max_size=4) | st.floats() | st.booleans()
              | st.integers(min_value=2**63)),
    st.tuples(st.just("stream"), st.text(max_size=3) | st.integers()),
    st.tuples(st.just("stream_options"),
              st.just({"continuous_usage_stats": "yes"}) | st.just({"x": True})),
    st.tuples(st.just("tools"), st.just([{"type": "code_interpreter"}])),
    st.tuples(st.just("logprobs"), st.text(max_size=3)),
)  # fmt: skip
# vLLM extras and anything else: refused by name.
_UNKNOWN_FIELD = st.tuples(
    st.sampled_from(
        ["best_of", "vllm_xargs", "kv_transfer_params", "prompt_embeds", "guided_json",
         "logits_processors", "priority", "request_id", "mm_processor_kwargs"]
    ) | st.text(min_size=1, max_size=12).filter(lambda k: k.isalpha() and k not in ACCEPTED),
    _JSON,
)  # fmt: skip


_NOT_STR = _JSON.filter(lambda v: not isinstance(v, str))
_NOT_OBJECT = _JSON.filter(lambda v: not isinstance(v, dict))


# Every key the nested objects below may hold: an unknown key is drawn from outside them.
_NESTED_KEYS = {"id", "type", "function", "name", "arguments", "description", "parameters",
                "strict"}  # fmt: skip


@st.composite
def nested_bad(draw: st.DrawFn) -> tuple[str, Any]:
    """A field whose nested part has the wrong type or an unknown key: where a set lookup of a
    list once raised TypeError (`{"type": ["text"]}`), and where vLLM got shapes unchecked."""
    name = "get_weather"
    where = draw(st.sampled_from(
        ["part_type", "role", "call_id", "call_name", "call_arguments", "call_key", "tool_name",
         "tool_parameters", "tool_key", "choice_name", "choice_key", "format_type", "format_key"]
    ))  # fmt: skip
    call: dict[str, Any] = {
        "id": "call_1", "type": "function", "function": {"name": name, "arguments": "{}"}
    }
    tool: dict[str, Any] = {
        "type": "function", "function": {"name": name, "parameters": {"type": "object"}}
    }
    choice: dict[str, Any] = {"type": "function", "function": {"name": name}}
    junk = draw(st.text(min_size=1, max_size=6).filter(lambda k: k not in _NESTED_KEYS))
    if where == "part_type":
        part = {"type": draw(_JSON.filter(lambda v: v != "text")), "text": "x"}
        return "messages", [{"role": "user", "content": [part]}]
    if where == "role":
        return "messages", [{"role": draw(_NOT_STR), "content": "x"}]
    if where.startswith("call_"):
        if where == "call_id":
            call["id"] = draw(_NOT_STR)
        elif where == "call_name":
            call["function"]["name"] = draw(_NOT_STR)
        elif where == "call_arguments":
            call["function"]["arguments"] = draw(_NOT_STR.filter(lambda v: v is not None))
        else:
            call[junk] = draw(_JSON)
        return "messages", [{"role": "user", "content": "x"},
                            {"role": "assistant", "content": None, "tool_calls": [call]}]
    if where.startswith("tool_"):
        if where == "tool_name":
            tool["function"]["name"] = draw(_NOT_STR)
        elif where == "tool_parameters":
            tool["function"]["parameters"] = draw(_NOT_OBJECT.filter(lambda v: v is not None))
        else:
            tool["function"][junk] = draw(_JSON)
        return "tools", [tool]
    if where == "choice_name":
        choice["function"]["name"] = draw(_NOT_STR)
        return "tool_choice", choice
    if where == "choice_key":
        choice[junk] = draw(_JSON)
        return "tool_choice", choice
    if where == "format_type":
        return "response_format", {"type": draw(_JSON.filter(
            lambda v: v not in ("text", "json_object")))}  # fmt: skip
    return "response_format", {"type": "json_object", junk: draw(_JSON)}


@st.composite
def hostile_body(draw: st.DrawFn) -> bytes:
    """A request body the gateway must refuse, as raw bytes."""
    kind = draw(
        st.sampled_from(["field", "nested", "unknown", "nan", "surrogate", "utf8", "shape"])
    )
    body = _ok_body()
    if kind == "field":
        name, value = draw(_BAD_FIELD)
        body[name] = value
    elif kind == "nested":
        name, value = draw(nested_bad())
        body[name] = value
    elif kind == "unknown":
        name, value = draw(_UNKNOWN_FIELD)
        body[name] = value
    elif kind == "nan":
        literal = draw(st.sampled_from(["NaN", "Infinity", "-Infinity"]))
        field = draw(st.sampled_from(["temperature", "top_p", "max_tokens", "seed"]))
        text = json.dumps({**body, field: 12345.5}).replace("12345.5", literal)
        return text.encode()
    elif kind == "surrogate":
        unit = draw(st.integers(min_value=0xD800, max_value=0xDFFF))
        text = json.dumps(body).replace(CANARY, f"{CANARY}\\u{unit:04x}")
        return text.encode()
    elif kind == "utf8":
        return json.dumps(body).encode().replace(b"hi", b"h\xff\xfe")
    else:
        return json.dumps(draw(_JSON.filter(lambda v: not isinstance(v, dict)))).encode()
    return json.dumps(body).encode()


@HYPOTHESIS
@given(raw=hostile_body(), path=st.sampled_from([CHAT, "/v1/completions"]))
def test_hostile_bodies_get_a_json_4xx_and_nothing_leaks(
    cloud_gateway: GatewayServer, raw: bytes, path: str
) -> None:
    gw = cloud_gateway
    response = httpx.post(
        f"{gw.url}{path}", content=raw, timeout=60,
        headers={**_auth(gw.api_key), "content-type": "application/json"},
    )  # fmt: skip
    _assert_json_4xx(response)


# Headers a hostile client sends, which the HTTP parser or the gateway must take as a 4xx with a
# JSON error at worst (when no Content-Length is drawn, the true one is sent).
_CONTENT_TYPES = ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data",
                  "application/json; charset=utf-16", "", "*/*", "application/json\tx"]
_HOSTS = ["evil.example", "", "127.0.0.1:1", "[::1", "a" * 300, "localhost:99999", "x y"]
_BAD_LENGTHS = ["abc", "-1", "1e3", "0x10", "", "+5", "1 2", "10, 11"]  # fmt: skip


@st.composite
def hostile_headers(draw: st.DrawFn) -> tuple[list[tuple[str, str]], bool]:
    """(headers besides Authorization, whether they alone must make the request a 4xx)."""
    headers: list[tuple[str, str]] = []
    refused = False
    content_type = draw(st.none() | st.sampled_from(_CONTENT_TYPES))
    if content_type is not None:
        headers.append(("Content-Type", content_type))
    host = draw(st.sampled_from([*_HOSTS, None, "missing"]))
    if host == "missing":
        refused = True  # HTTP/1.1 requires a Host
    else:
        headers.append(("Host", host if host is not None else "127.0.0.1"))
    length = draw(st.none() | st.sampled_from(_BAD_LENGTHS))
    if length is not None:
        headers.append(("Content-Length", length))
        refused = True
    return headers, refused


def _raw_post(
    gw: GatewayServer, path: str, body: bytes, headers: list[tuple[str, str]]
) -> tuple[int, str, bytes]:
    """POST with exactly these headers (httpx would fix a bad Content-Length or Host): the
    status, the Content-Type and the body of the answer."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", int(gw.url.rsplit(":", 1)[1]), timeout=60)
    try:
        conn.putrequest("POST", path, skip_host=True, skip_accept_encoding=True)
        conn.putheader("Authorization", f"Bearer {gw.api_key}")
        for name, value in headers:
            conn.putheader(name, value)
        if not any(name == "Content-Length" for name, _ in headers):
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return response.status, response.getheader("content-type") or "", response.read()
    finally:
        conn.close()


@HYPOTHESIS
@given(
    headers=hostile_headers(),
    raw=st.none() | hostile_body(),
    path=st.sampled_from([CHAT, "/v1/completions"]),
)
def test_hostile_headers_get_a_json_4xx_never_a_5xx(
    cloud_gateway: GatewayServer,
    headers: tuple[list[tuple[str, str]], bool],
    raw: bytes | None,
    path: str,
) -> None:
    """A foreign Host or an odd Content-Type is the gateway's to ignore (clients are keys, not
    web pages); a request must then still stand or fall by its body. A Content-Length that is
    no number, or no Host at all, is a 4xx from the HTTP parser, as JSON too."""
    pairs, refused = headers
    if raw is None:  # a good body: only the headers can make it a 4xx
        body = _ok_body(max_tokens=1)
        if path != CHAT:
            body = {"model": "target", "prompt": f"Say hi {CANARY}", "max_tokens": 1}
        raw = json.dumps(body).encode()
    else:
        refused = True
    status, content_type, answer = _raw_post(cloud_gateway, path, raw, pairs)
    assert status < 500, (status, answer[:300])
    if refused:
        assert 400 <= status < 500, (status, answer[:300])
    if status >= 400:
        assert content_type.startswith("application/json"), (status, content_type, answer[:200])
        assert json.loads(answer)["error"]["message"]


def test_after_the_hostile_suite_the_gateway_is_whole(cloud_gateway: GatewayServer) -> None:
    """Runs after the property tests above: no slot lost, no text in the log, still answering."""
    gw = cloud_gateway
    assert _wait_idle(gw) == 0
    response = httpx.post(f"{gw.url}{CHAT}", json=_ok_body(), headers=_auth(gw.api_key),
                          timeout=120)  # fmt: skip
    assert response.status_code == 200, response.text
    log = gw.log()
    assert CANARY not in log and "Traceback" not in log
    for line in log.splitlines():
        if " tandem.gateway " in line:  # a request's ids and counts, or a short event
            assert "request_id=" in line or "adapter " in line or "vLLM /metrics" in line, line
    assert _in_flight(gw) == 0


# --- one test per finding ---------------------------------------------------------------------


def test_nan_and_surrogates_no_longer_leak_admission_slots(cloud_gateway: GatewayServer) -> None:
    """Before: json.loads took NaN, httpx refused to send it after admission, 500, and the slot
    was never released; 5 such requests locked a 4-concurrent key out until restart."""
    gw = cloud_gateway
    key = gw.add_key("nan-sender")
    headers = {**_auth(key), "content-type": "application/json"}
    nan = json.dumps(_ok_body(temperature=9.5)).replace("9.5", "NaN").encode()
    surrogate = json.dumps(_ok_body()).replace(CANARY, "\\udc00").encode()
    for raw in [nan, surrogate] * 5:
        response = httpx.post(f"{gw.url}{CHAT}", content=raw, headers=headers, timeout=60)
        assert response.status_code == 400, response.text
    for _ in range(5):  # more than the key's concurrency of 4
        response = httpx.post(f"{gw.url}{CHAT}", json=_ok_body(), headers=headers, timeout=120)
        assert response.status_code == 200, response.text
    assert _wait_idle(gw) == 0


def test_every_error_after_admission_gives_its_slot_back(
    cloud_gateway: GatewayServer, test_models: ModelSet
) -> None:
    """vLLM's own 4xx, an adapter vLLM will not load on a request, and on an upload (which
    takes a slot too): five of each, more than the key's concurrency of 4, so a slot kept by
    any of them would turn the next into a 429. Then nothing is in flight and a request
    answers."""
    gw = cloud_gateway
    key = gw.add_key("after-admission")
    owner = next(r.owner for r in KeyStore(gw.keys_file).records() if r.name == "after-admission")
    config, weights = make_adapter(seed=5)
    # Passes the gateway's checks; vLLM refuses LoRA bias when it loads it. Stored as one the
    # gateway has not loaded yet (as after vLLM restarted), it fails when a request uses it.
    refused = json.dumps({**json.loads(config), "lora_bias": True}).encode()
    store = AdapterStore(gw.adapters_dir, BaseShape.from_model_dir(test_models.target), 8)
    store.commit(store.stage(owner, "unloadable", refused, io.BytesIO(weights)))
    too_long = _ok_body(messages=[{"role": "user", "content": "word " * 6000}])  # > 4,096 tokens
    for _ in range(5):
        response = httpx.post(f"{gw.url}{CHAT}", json=too_long, headers=_auth(key), timeout=120)
        assert 400 <= response.status_code < 500 and response.status_code != 429, response.text
        response = httpx.post(f"{gw.url}{CHAT}", json=_ok_body(model="unloadable"),
                              headers=_auth(key), timeout=120)  # fmt: skip
        assert response.status_code == 422, response.text
        response = upload(gw, key, "refused", refused, weights)
        assert response.status_code == 422, response.text
    assert _in_flight(gw) == 0
    response = httpx.post(f"{gw.url}{CHAT}", json=_ok_body(), headers=_auth(key), timeout=120)
    assert response.status_code == 200, response.text
    assert _in_flight(gw) == 0


def test_an_unreachable_vllm_gives_every_slot_back(test_models: ModelSet, tmp_path: Path) -> None:
    """The gateway's vLLM is a closed port: every answer and upload fails after admission
    (503), six of each, more than the key's concurrency and the cap of 4 that admission keeps
    while vLLM's load is unreadable. None of them may keep its slot."""
    gw = start_gateway(None, tmp_path / "gateway", model_dir=test_models.target,
                       upstream_url=f"http://127.0.0.1:{free_port()}")  # fmt: skip
    try:
        config, weights = make_adapter()
        for _ in range(6):
            response = httpx.post(f"{gw.url}{CHAT}", json=_ok_body(), headers=_auth(gw.api_key),
                                  timeout=60)  # fmt: skip
            assert response.status_code == 503, response.text
            response = upload(gw, gw.api_key, "mine", config, weights)
            assert response.status_code == 503, response.text
        assert _in_flight(gw) == 0
    finally:
        gw.stop()


def test_a_chunked_body_past_the_cap_is_413(cloud_gateway: GatewayServer) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"model": "target", "messages": [{"role": "user", "content": "'
        for _ in range(5 * 1024):  # 5 MiB, over the 4 MiB cap, without a Content-Length
            yield b"x" * 1024
        yield b'"}]}'

    gw = cloud_gateway
    response = httpx.post(
        f"{gw.url}{CHAT}", content=chunks(), timeout=60,
        headers={**_auth(gw.api_key), "content-type": "application/json"},
    )  # fmt: skip
    assert response.status_code == 413
    assert "larger than" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"n": 256, "ignore_eos": True}, "'n'"),
        ({"max_tokens": 100_000}, "'max_tokens'"),
        ({"best_of": 4}, "best_of"),
        ({"vllm_xargs": {"x": 1}}, "vllm_xargs"),
        ({"kv_transfer_params": {}}, "kv_transfer_params"),
        ({"prompt_embeds": "AAAA"}, "prompt_embeds"),
        ({"stop": 5}, "'stop'"),
    ],
)
def test_fields_outside_the_allowlist_or_its_caps_are_400(
    cloud_gateway: GatewayServer, extra: dict[str, Any], field: str
) -> None:
    gw = cloud_gateway
    response = httpx.post(f"{gw.url}{CHAT}", json=_ok_body(**extra), headers=_auth(gw.api_key),
                          timeout=60)  # fmt: skip
    assert response.status_code == 400
    assert field in response.json()["error"]["message"]


def test_a_non_numeric_content_length_is_a_4xx_not_a_500(cloud_gateway: GatewayServer) -> None:
    port = int(cloud_gateway.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + cloud_gateway.api_key.encode() + b"\r\n"
            b"Content-Length: abc\r\n\r\n{}"
        )
        status = s.recv(200).split(b" ", 2)[1]
    assert status.startswith(b"4"), status


def _prefix_hits(vllm: VLLMServer) -> float:
    text = httpx.get(f"{vllm.url}/metrics", timeout=10).text
    return parse_metrics(text).get("vllm:prefix_cache_hits_total", 0.0)


def test_tenants_do_not_share_the_prefix_cache(cloud_gateway: GatewayServer) -> None:
    """One key cannot time another's prompts: the gateway salts the cache per key owner (and
    drops a salt the client sends)."""
    gw = cloud_gateway
    assert gw.vllm is not None
    alice, mallory = gw.add_key("salt-alice"), gw.add_key("salt-mallory")
    system = "You are the assistant of a secret project. " * 40  # many full KV blocks
    body = {
        "model": "target", "max_tokens": 1, "temperature": 0,
        "messages": [{"role": "system", "content": system}, {"role": "user", "content": "hi"}],
    }  # fmt: skip

    def ask(key: str, **extra: Any) -> float:
        before = _prefix_hits(gw.vllm)  # type: ignore[arg-type]
        response = httpx.post(f"{gw.url}{CHAT}", json={**body, **extra}, headers=_auth(key),
                              timeout=120)  # fmt: skip
        assert response.status_code == 200, response.text
        return _prefix_hits(gw.vllm) - before  # type: ignore[arg-type]

    ask(alice)
    assert ask(alice) > 0  # the same tenant reuses its own prefix
    assert ask(mallory) == 0  # another tenant does not hit it
    assert ask(alice, cache_salt="other") > 0  # a client's salt is dropped, not used
    eve = gw.add_key("salt-eve")
    assert ask(eve, cache_salt="anything") == 0  # nor does sending one get another's cache


@pytest.fixture(scope="module")
def strict_gateway(
    test_models: ModelSet, vllm_server: VLLMServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayServer]:
    """A gateway with short slow-client limits, a tight rate limit and small adapter quotas
    (a profile of its own), in front of the shared vLLM."""
    folder = Path(tmp_path_factory.mktemp("strict-gateway"))
    profile = (Path(__file__).parent.parent / "cloud/profiles/cpu.toml").read_text()
    profile = profile.replace("adapter-quota-count = 8", "adapter-quota-count = 2")
    (folder / "strict.toml").write_text(profile)
    gateway = start_gateway(
        vllm_server, folder, model_dir=test_models.target,
        extra_args=["--profile", str(folder / "strict.toml"), "--stream-write-timeout", "1",
                    "--header-timeout", "1", "--rate-per-second", "0.5", "--burst", "5",
                    "--max-adapter-bytes", str(2**20)],
    )  # fmt: skip
    try:
        yield gateway
    finally:
        gateway.stop()


def test_a_client_that_stops_reading_loses_its_slot(strict_gateway: GatewayServer) -> None:
    gw = strict_gateway
    port = int(gw.url.rsplit(":", 1)[1])
    body = json.dumps({"model": "target", "prompt": "The river", "max_tokens": 4096, "n": 4,
                       "ignore_eos": True, "stream": True}).encode()  # fmt: skip
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # fills at once when not read
    s.connect(("127.0.0.1", port))
    try:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + gw.api_key.encode() + b"\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        deadline = time.monotonic() + 90
        while _in_flight(gw) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        # ...and never read: the relay's write times out and frees the slot (and vLLM's).
        assert _wait_idle(gw, timeout_s=120) == 0
        assert _wait_for_log(gw, "outcome=client_stalled")
    finally:
        s.close()


def test_a_connection_that_never_finishes_its_headers_is_closed(
    strict_gateway: GatewayServer,
) -> None:
    port = int(strict_gateway.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")  # and then nothing
        assert s.recv(100) == b""  # the gateway closed it (a slowloris holds nothing)


def test_a_revoked_keys_stream_ends(cloud_gateway: GatewayServer) -> None:
    gw = cloud_gateway
    key = gw.add_key("revoked-mid-stream")
    body = {"model": "target", "prompt": "The river", "max_tokens": 4000, "ignore_eos": True,
            "stream": True}  # fmt: skip
    chunks = 0
    with httpx.stream("POST", f"{gw.url}/v1/completions", json=body, headers=_auth(key),
                      timeout=120) as response:  # fmt: skip
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                chunks += 1
                if chunks == 3:
                    gw.revoke_key("revoked-mid-stream")
    assert chunks < 4000  # it ended long before the answer was done
    assert _wait_for_log(gw, "outcome=key_revoked")
    assert _wait_idle(gw) == 0


def test_retry_after_rounds_a_short_wait_up(strict_gateway: GatewayServer) -> None:
    gw = strict_gateway
    key = gw.add_key("impatient")
    statuses = []
    for _ in range(8):  # burst 5, then the bucket refills at 0.5/s: waits under 2 s
        response = httpx.post(f"{gw.url}{CHAT}", json=_ok_body(max_tokens=1),
                              headers=_auth(key), timeout=120)  # fmt: skip
        statuses.append(response.status_code)
        if response.status_code == 429:
            assert int(response.headers["retry-after"]) >= 1
            break
    assert 429 in statuses


def test_adapter_quota_per_key(strict_gateway: GatewayServer) -> None:
    gw = strict_gateway
    key = gw.add_key("quota")
    config, weights = make_adapter()
    assert upload(gw, key, "one", config, weights).status_code == 201
    assert upload(gw, key, "two", config, weights).status_code == 201
    refused = upload(gw, key, "three", config, weights)
    assert refused.status_code == 403 and "at most 2 adapters" in refused.text
    assert upload(gw, key, "two", config, weights).status_code == 201  # replacing is fine


def test_parallel_uploads_from_one_key_stay_within_its_quota(strict_gateway: GatewayServer) -> None:
    """Before: each upload checked its key's usage before any of them was committed, so four
    at once all passed a quota of 2."""
    import concurrent.futures

    gw = strict_gateway
    key = gw.add_key("parallel-quota")
    config, weights = make_adapter()
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda n: upload(gw, key, f"p{n}", config, weights), range(4)))
    assert sorted(a.status_code for a in answers) == [201, 201, 403, 403], [
        a.text for a in answers
    ]
    listed = httpx.get(f"{gw.url}/v1/adapters", headers=_auth(key), timeout=30).json()["data"]
    assert len(listed) == 2


def test_a_replacement_vllm_refuses_leaves_the_old_adapter_answering(
    cloud_gateway: GatewayServer,
) -> None:
    gw = cloud_gateway
    key = gw.add_key("replacer")
    config, weights = make_adapter(seed=3)
    assert upload(gw, key, "mine", config, weights).status_code == 201
    ask = {"model": "mine", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 6,
           "temperature": 0}  # fmt: skip
    before = httpx.post(f"{gw.url}{CHAT}", json=ask, headers=_auth(key), timeout=120).json()
    # Passes the gateway's checks, but vLLM refuses LoRA bias when it loads it.
    bad_config = json.dumps({**json.loads(config), "lora_bias": True}).encode()
    _, new_weights = make_adapter(seed=4)
    refused = upload(gw, key, "mine", bad_config, new_weights)
    assert refused.status_code == 422, refused.text
    assert str(gw.adapters_dir) not in refused.text and "/tmp" not in refused.text
    after = httpx.post(f"{gw.url}{CHAT}", json=ask, headers=_auth(key), timeout=120).json()
    assert after["choices"][0]["message"] == before["choices"][0]["message"]


@pytest.mark.parametrize(
    "header",
    [
        b"[1, 2]",
        b'{"x": "not a tensor"}',
        b'{"x": {"data_offsets": "abc"}}',
        b'{"x": {"data_offsets": [0, 99999999], "shape": [8, 128], "dtype": "F32"}}',
        b"\xff\xfe not json",
    ],
)
def test_a_malformed_safetensors_header_is_400(cloud_gateway: GatewayServer, header: bytes) -> None:
    config, _ = make_adapter()
    weights = struct.pack("<Q", len(header)) + header + b"\0" * 64
    response = upload(cloud_gateway, cloud_gateway.api_key, "malformed", config, weights)
    assert response.status_code == 400, response.text
    assert "safetensors" in response.json()["error"]["message"]


def test_a_chunked_upload_past_the_cap_is_413(cloud_gateway: GatewayServer) -> None:
    gw = cloud_gateway
    boundary = "tandemboundary"

    def chunks() -> Iterator[bytes]:
        yield (f'--{boundary}\r\nContent-Disposition: form-data; name="name"\r\n\r\nbig\r\n'
               f'--{boundary}\r\nContent-Disposition: form-data; name="adapter_model"; '
               'filename="adapter_model.safetensors"\r\n\r\n').encode()  # fmt: skip
        for _ in range(3 * 1024):  # 3 MiB, over the fixture's 1 MiB cap
            yield b"\0" * 1024
        yield f"\r\n--{boundary}--\r\n".encode()

    response = httpx.post(
        f"{gw.url}/v1/adapters", content=chunks(), timeout=60,
        headers={**_auth(gw.api_key),
                 "content-type": f"multipart/form-data; boundary={boundary}"},
    )  # fmt: skip
    assert response.status_code == 413, response.text
    assert _wait_idle(gw) == 0


def test_cloud_serve_puts_vllm_on_a_private_unix_socket(
    test_models: ModelSet, tmp_path: Path
) -> None:
    """vLLM's key guards only /v1: `tandem cloud serve` gives it no TCP port at all, only a
    socket in a folder nobody else can enter; the gateway still answers through it."""
    import os
    import re
    import signal
    import stat
    import subprocess
    import sys

    from cloud.gateway.keys import KeyStore
    from tests.servers import free_port

    key = KeyStore(tmp_path / "keys.json").add("alice")
    port = free_port()
    argv = [
        sys.executable, "-m", "tui.cli", "cloud", "serve", "--profile", "cpu",
        "--model", str(test_models.target), "--served-model-name", "target",
        "--host", "127.0.0.1", "--port", str(port), "--keys-file", str(tmp_path / "keys.json"),
        "--adapters-dir", str(tmp_path / "adapters"), "--vllm-log", str(tmp_path / "vllm.log"),
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    errors = tmp_path / "serve.err"
    with errors.open("wb") as err:
        serve = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, env=env,
                                 cwd=Path(__file__).parent.parent)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 400
        while True:
            assert serve.poll() is None, errors.read_text()
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, errors.read_text()
            time.sleep(0.5)
        said = errors.read_text()
        found = re.search(r"the Unix socket (\S+) \.\.\.", said)
        assert found, said
        sock = Path(found.group(1))
        assert sock.exists() and stat.S_IMODE(sock.parent.stat().st_mode) == 0o700
        pid = int(re.search(r"vLLM pid (\d+)", said).group(1))  # type: ignore[union-attr]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert b"--uds" in cmdline and b"--port" not in cmdline and b"--host" not in cmdline
        response = httpx.post(f"{url}{CHAT}", json=_ok_body(), headers=_auth(key), timeout=120)
        assert response.status_code == 200, response.text
        assert httpx.post(f"{url}/tokenize", json={"prompt": "x"}, timeout=10).status_code == 404
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            serve.kill()
            serve.wait()
    assert not sock.parent.exists()  # the socket's folder goes with the server
