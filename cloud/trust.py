"""Which servers the desktop's cloud client trusts: the system's certificate authorities, plus
the one a self-hosted gateway's certificate was signed with (`cloud_ca_file`), since a
private server rarely has a publicly trusted certificate."""

from __future__ import annotations

import ssl
from pathlib import Path

import httpx

from router.protocol import TandemError

__all__ = ["UNTRUSTED_HINT", "TrustError", "is_untrusted_certificate", "ssl_context"]

UNTRUSTED_HINT = (
    "if it is your own gateway, set cloud_ca_file to the PEM certificate of the CA that "
    "signed it (Settings, F3)"
)


class TrustError(TandemError, ValueError):
    """The CA file cannot be used (missing, unreadable, not PEM certificates)."""


def ssl_context(ca_file: str | Path | None) -> ssl.SSLContext:
    """The system's trusted CAs, plus those in `ca_file` (PEM) when given."""
    context = ssl.create_default_context()
    if ca_file:
        try:
            context.load_verify_locations(cafile=str(ca_file))
        except FileNotFoundError as exc:
            raise TrustError(f"cloud_ca_file {ca_file} does not exist") from exc
        except (OSError, ssl.SSLError) as exc:
            raise TrustError(
                f"cloud_ca_file {ca_file} holds no usable PEM certificate ({exc})"
            ) from exc
    return context


def is_untrusted_certificate(exc: BaseException) -> bool:
    """Whether a connection failed because the server's certificate was not trusted."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        if isinstance(seen, httpx.ConnectError) and "CERTIFICATE_VERIFY_FAILED" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False
