"""HTTPS: given a certificate and key, the gateway serves TLS (self-signed cert made here), and
the desktop's client trusts such a private CA when told to (`cloud_ca_file`), and says what to
set when it is not."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cloud.client import CloudClient
from cloud.trust import TrustError
from router.protocol import ChatRequest, Message, Sampling, Unavailable, collect
from scripts.testmodels import ModelSet
from tests.cloud_servers import start_gateway
from tests.reference import vllm_greedy
from tests.servers import VLLMServer


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.mark.vllm
def test_the_gateway_serves_https_with_a_given_certificate(
    test_models: ModelSet, vllm_server: VLLMServer, tmp_path: Path
) -> None:
    cert, key = _self_signed(tmp_path)
    gateway = start_gateway(
        vllm_server, tmp_path / "gw", model_dir=test_models.target, tls=(cert, key)
    )
    try:
        assert gateway.url.startswith("https://")
        response = httpx.post(
            f"{gateway.url}/v1/chat/completions",
            headers={"Authorization": f"Bearer {gateway.api_key}"},
            json={"model": "target", "max_tokens": 8, "temperature": 0,
                  "messages": [{"role": "user", "content": "What sound does a dog make?"}]},
            verify=ssl.create_default_context(cafile=str(cert)),
            timeout=60,
        )  # fmt: skip
        assert response.status_code == 200
        assert response.json()["choices"][0]["message"]["content"] == vllm_greedy(
            vllm_server.url, vllm_server.served_model, "What sound does a dog make?", 8)
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{gateway.port}/health", timeout=5)
    finally:
        gateway.stop()


@pytest.mark.vllm
async def test_the_client_trusts_a_private_ca_only_when_given_its_certificate(
    test_models: ModelSet, vllm_server: VLLMServer, tmp_path: Path
) -> None:
    cert, key = _self_signed(tmp_path)
    gateway = start_gateway(
        vllm_server, tmp_path / "gw", model_dir=test_models.target, tls=(cert, key)
    )
    request = ChatRequest(
        (Message("user", "What sound does a dog make?"),), Sampling(max_tokens=8)
    )
    try:
        async with CloudClient(gateway.url, gateway.api_key, ca_file=cert) as client:
            text, final = await collect(client.stream(request))
        assert text == vllm_greedy(vllm_server.url, vllm_server.served_model,
                                   "What sound does a dog make?", 8)
        assert final.finish_reason in ("stop", "length")

        async with CloudClient(gateway.url, gateway.api_key) as client:
            with pytest.raises(Unavailable) as refused:
                await collect(client.stream(request))
        message = str(refused.value)
        assert "does not trust" in message and "cloud_ca_file" in message
    finally:
        gateway.stop()
    with pytest.raises(TrustError, match="does not exist"):
        CloudClient("https://127.0.0.1:1", "k", ca_file=tmp_path / "missing.pem")
