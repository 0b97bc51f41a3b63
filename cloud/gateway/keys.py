"""API keys: a file of salted hashes (mode 0600), never the keys themselves.

A key is 32 random bytes (`tdm_` + URL-safe base64), shown once when it is made. Keys are
high-entropy, so one salted SHA-256 per key is as strong as a slow hash here and costs
microseconds per request. Lookup compares against every stored hash with
`hmac.compare_digest` and never stops early, so timing reveals nothing about which key matched.
The file is re-read when it changes, so `tandem cloud keys add/revoke` works on a running
gateway.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from router.protocol import TandemError

__all__ = ["KeyRecord", "KeyStore", "KeyStoreError"]

KEY_PREFIX = "tdm_"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class KeyStoreError(TandemError, ValueError):
    """A key-file operation that cannot be done (bad name, duplicate, unknown)."""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """One stored key: its name and salted hash, never the key."""

    name: str
    salt: str
    digest: str
    admin: bool = False
    created: float = 0.0

    @property
    def owner(self) -> str:
        """Whom this key's uploads belong to: this key, not its name. A key revoked and
        issued again under the same name (to someone else, perhaps) starts with nothing."""
        return f"{self.name}.{self.salt[:12]}"


def _hash(salt: str, key: str) -> str:
    return hashlib.sha256(bytes.fromhex(salt) + key.encode()).hexdigest()


class KeyStore:
    """The gateway's key file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._records: list[KeyRecord] = []
        self._stamp: tuple[int, ...] | None = None

    # --- reading ----------------------------------------------------------------------------

    def records(self) -> list[KeyRecord]:
        """The stored keys, re-read if the file changed since the last call."""
        with self._lock:
            try:
                st = self.path.stat()
                # The inode too: a file replaced within the clock's tick with the same size
                # (a revocation written by rename) must still be noticed.
                stamp = (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                self._records, self._stamp = [], None
                return []
            if stamp != self._stamp:
                try:
                    data = json.loads(self.path.read_text() or "{}")
                    self._records = [KeyRecord(**r) for r in data.get("keys", [])]
                except (ValueError, TypeError, AttributeError):
                    # A hand-edited file that does not parse: no key works until it is fixed
                    # (failing closed), and the next change is read again.
                    self._records = []
                self._stamp = stamp
            return list(self._records)

    def verify(self, key: str) -> KeyRecord | None:
        """The record whose key this is, or None. Constant time in the key's content."""
        found: KeyRecord | None = None
        for record in self.records():
            # No early exit: every record is compared whatever matched.
            if hmac.compare_digest(_hash(record.salt, key), record.digest):
                found = record
        return found

    # --- writing (the `tandem cloud keys` command) -----------------------------------------

    def add(self, name: str, *, admin: bool = False) -> str:
        """Store a new key under `name` and return the key itself (shown once)."""
        if not NAME_RE.match(name):
            raise KeyStoreError(f"key name {name!r} must be 1-64 letters, digits, '.', '_' or '-'")
        records = self.records()
        if any(r.name == name for r in records):
            raise KeyStoreError(
                f"a key named {name!r} exists; revoke it first or pick another name"
            )
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        salt = secrets.token_hex(16)
        records.append(KeyRecord(name, salt, _hash(salt, key), admin, time.time()))
        self._write(records)
        return key

    def revoke(self, name: str) -> KeyRecord:
        """Delete the key named `name`; returns its record (to find what it owned)."""
        records = self.records()
        gone = [r for r in records if r.name == name]
        if not gone:
            raise KeyStoreError(f"no key named {name!r}")
        self._write([r for r in records if r.name != name])
        return gone[0]

    def _write(self, records: list[KeyRecord]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        # Created 0600 from the start: the hashes are never world-readable, even briefly.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"keys": [asdict(r) for r in records]}, f, indent=1)
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)
        with self._lock:
            self._stamp = None
