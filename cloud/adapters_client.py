"""Desktop side of adapter uploads: send a PEFT folder to the gateway's `POST /v1/adapters`.

The gateway (cloud/gateway/app.py) takes multipart fields `name`, `adapter_config`
(adapter_config.json) and `adapter_model` (adapter_model.safetensors), validates the adapter
against its base model, loads it into vLLM and answers 201 ``{"name", "rank"}``. After that,
chat requests with ``"model": name`` on that key use the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import httpx

from cloud.trust import UNTRUSTED_HINT, is_untrusted_certificate, ssl_context
from router.protocol import BackendError, ModelError, Unauthorized, Unavailable

__all__ = ["UploadedAdapter", "upload_adapter"]


@dataclass(frozen=True, slots=True)
class UploadedAdapter:
    name: str
    rank: int


def _message(response: httpx.Response) -> str:
    try:
        error = response.json().get("error", {})
        text = error.get("message") if isinstance(error, dict) else str(error)
    except ValueError:
        text = None
    return str(text or response.text[:200] or f"HTTP {response.status_code}")


def upload_adapter(
    base_url: str,
    api_key: str | None,
    name: str,
    peft_folder: Path,
    *,
    timeout_s: float = 120.0,
    ca_file: str | Path | None = None,
) -> UploadedAdapter:
    """Upload one PEFT adapter folder under `name`. Raises Unauthorized (key refused),
    Unavailable (cannot reach the gateway or not trust its certificate) or ModelError (the
    gateway refused the adapter); TrustError for an unusable `ca_file`."""
    folder = Path(peft_folder)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    files = {
        "adapter_config": (
            "adapter_config.json", (folder / "adapter_config.json").read_bytes(),
            "application/json",
        ),
        "adapter_model": (
            "adapter_model.safetensors", (folder / "adapter_model.safetensors").read_bytes(),
            "application/octet-stream",
        ),
    }
    url = base_url.rstrip("/") + "/v1/adapters"
    try:
        response = httpx.post(url, headers=headers, data={"name": name}, files=files,
                              timeout=timeout_s, verify=ssl_context(ca_file))
    except httpx.HTTPError as exc:
        if is_untrusted_certificate(exc):
            raise Unavailable(
                f"the cloud at {base_url} presented a certificate this computer does not "
                f"trust; {UNTRUSTED_HINT}",
                backend="cloud",
            ) from exc
        raise Unavailable(f"could not reach the cloud at {base_url} ({exc})",
                          backend="cloud") from exc
    if response.status_code in (401, 403):
        raise Unauthorized(f"the cloud refused the API key: {_message(response)}", backend="cloud")
    if response.status_code != 201:
        raise ModelError(f"the cloud refused the adapter: {_message(response)}", backend="cloud")
    try:
        data = response.json()
        return UploadedAdapter(str(data["name"]), int(data["rank"]))
    except (ValueError, KeyError, TypeError) as exc:
        raise BackendError(f"the cloud answered the upload oddly: {response.text[:200]}",
                           backend="cloud") from exc
