"""The cloud API key: in the OS keyring, or in `TANDEM_CLOUD_API_KEY`. Never in the config file,
the database or a log.

On a machine without a keyring backend (headless Linux: `keyring.backends.fail.Keyring`),
`save_api_key` raises `NoKeyring` whose message names the environment variable to use instead.
"""

from __future__ import annotations

import contextlib
import os

from router.protocol import TandemError

__all__ = [
    "ENV_VAR",
    "NoKeyring",
    "delete_api_key",
    "keyring_status",
    "load_api_key",
    "save_api_key",
]

ENV_VAR = "TANDEM_CLOUD_API_KEY"
SERVICE = "tandem"
USERNAME = "cloud-api-key"
NO_KEYRING_MESSAGE = (
    "No OS keyring is available on this machine, so tandem cannot store the key. "
    f"Set the environment variable {ENV_VAR} instead."
)


class NoKeyring(TandemError):
    """No keyring backend exists here; the message says to use the environment variable."""


def _backend() -> object | None:
    """The keyring backend in use, or None when there is none that can store a secret."""
    import keyring
    from keyring.backends import fail

    backend = keyring.get_keyring()
    if isinstance(backend, fail.Keyring):
        return None
    # A chainer with nothing to chain is as good as no keyring.
    if getattr(backend, "backends", None) == []:
        return None
    return backend


def keyring_status() -> str:
    """One line for the settings screen: where the key is kept."""
    if os.environ.get(ENV_VAR):
        return f"Using the key from {ENV_VAR}."
    backend = _backend()
    if backend is None:
        return NO_KEYRING_MESSAGE
    return f"The key is kept in the OS keyring ({type(backend).__name__})."


def load_api_key() -> str | None:
    """The key from the environment, else from the keyring; None when neither has one."""
    env = os.environ.get(ENV_VAR)
    if env:
        return env
    if _backend() is None:
        return None
    import keyring
    from keyring.errors import KeyringError

    try:
        return keyring.get_password(SERVICE, USERNAME)
    except KeyringError:
        return None


def save_api_key(key: str) -> None:
    """Store the key in the OS keyring; raises NoKeyring when there is none."""
    if _backend() is None:
        raise NoKeyring(NO_KEYRING_MESSAGE)
    import keyring
    from keyring.errors import KeyringError

    try:
        keyring.set_password(SERVICE, USERNAME, key)
    except KeyringError as exc:
        raise NoKeyring(f"The OS keyring refused the key ({exc}). Set {ENV_VAR} instead.") from exc


def delete_api_key() -> None:
    """Remove the key from the keyring (nothing happens when there is none)."""
    if _backend() is None:
        return
    import keyring
    from keyring.errors import KeyringError

    with contextlib.suppress(KeyringError):
        keyring.delete_password(SERVICE, USERNAME)
