"""Which chats have a conversation store open right now, so that one chat never marks another
running chat's answer "incomplete" (two windows on one database are allowed).

Each open store holds an exclusive `flock` on a file of its own in `<database>.writers/`. The
kernel drops the lock when the process ends, however it ends (SIGKILL included), so a lock that
can be taken belongs to a chat that is gone and whose streaming answers were cut off.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import uuid
from pathlib import Path

__all__ = ["WriterLease", "writer_alive"]


def _folder(database: Path) -> Path:
    return database.with_name(database.name + ".writers")


class WriterLease:
    """This process's claim on a store: `id` goes into every answer it streams."""

    def __init__(self, writer_id: str, fd: int | None, path: Path | None) -> None:
        self.id = writer_id
        self._fd = fd
        self._path = path

    @classmethod
    def acquire(cls, database: Path | None) -> WriterLease:
        """A new lease; in memory (`database` None) nobody else can see the store anyway."""
        writer_id = uuid.uuid4().hex
        if database is None:
            return cls(writer_id, None, None)
        folder = _folder(database)
        folder.mkdir(parents=True, exist_ok=True)
        # Locked under a scratch name, then renamed: another chat never sees the file
        # unlocked and takes it for a dead writer's.
        scratch = folder / f".{writer_id}.new"
        fd = os.open(scratch, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        path = folder / f"{writer_id}.lock"
        os.replace(scratch, path)
        return cls(writer_id, fd, path)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if self._path is not None:
            with contextlib.suppress(OSError):
                self._path.unlink()
        os.close(fd)


def writer_alive(database: Path | None, writer_id: str) -> bool:
    """Whether the chat that wrote `writer_id` still has the store open. A dead writer's lock
    file is removed on the way."""
    if database is None or not writer_id:
        return False
    path = _folder(database) / f"{writer_id}.lock"
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    with contextlib.suppress(OSError):
        path.unlink()
    return False
