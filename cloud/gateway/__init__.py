"""The gateway: API keys, fast 429s, users' adapters and streaming passthrough in front of vLLM."""

from cloud.gateway.admission import AdmissionConfig
from cloud.gateway.app import GatewayConfig, create_app
from cloud.gateway.keys import KeyRecord, KeyStore, KeyStoreError
from cloud.gateway.server import serve_gateway

__all__ = [
    "AdmissionConfig",
    "GatewayConfig",
    "KeyRecord",
    "KeyStore",
    "KeyStoreError",
    "create_app",
    "serve_gateway",
]
