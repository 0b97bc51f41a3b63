"""The conversation store: one SQLite file (WAL) with conversations, messages and each answer's
route record and usage.

The schema grows by numbered, append-only migrations (`m001_initial`, ...) recorded in the
`migrations` table; never edit one that has shipped, add the next. An answer is written as
soon as it starts (status "streaming") and its text is updated while it streams, so a crash or
a kill loses at most the last second; `Store.open()` marks any answer still "streaming" from a
chat that is no longer running as "incomplete" (tui/writers.py tells which are).
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from router.protocol import Final
from tui.migrations import MIGRATIONS
from tui.store_parts import PartsStore
from tui.writers import WriterLease, writer_alive

__all__ = [
    "MIGRATIONS",
    "Conversation",
    "MessageStatus",
    "Store",
    "StoredMessage",
    "StoredRoute",
]

MessageStatus = Literal["complete", "streaming", "cancelled", "incomplete", "error"]


def _private_database(path: Path) -> None:
    """The conversations are the user's alone: the folder 0700, the file and its -wal/-shm
    0600 (SQLite gives those the database file's mode; older files are tightened too)."""
    import os

    from tui.paths import private_dir

    private_dir(path.parent)
    os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
    for file in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        if file.exists():
            os.chmod(file, 0o600)


@dataclass(slots=True)
class Conversation:
    id: str
    title: str
    created_at: float
    updated_at: float
    system_prompt: str = ""
    """Sent as the first (system) message of every request in this conversation."""
    adapter: str = ""
    """LoRA adapter name applied to this conversation's answers; empty: the base model."""
    local_only: bool = False
    """Pinned to this device: the router never sends it to the cloud."""


@dataclass(slots=True)

class StoredRoute:
    """Where an answer ran, why, and what it cost (from the stream's Final record)."""

    backend: str
    model: str
    adapter: str | None
    finish_reason: str
    rule: str
    reason: str
    failover: str | None
    scores: dict[str, float]
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float | None
    decode_tokens_per_s: float | None
    cached_prompt_tokens: int
    draft_tokens_accepted: int
    peak_memory_bytes: int | None

    @classmethod
    def from_final(cls, final: Final) -> StoredRoute:
        route = final.route
        u = final.usage
        return cls(
            backend=route.backend if route else final.backend,
            model=final.model,
            adapter=final.adapter,
            finish_reason=final.finish_reason,
            rule=route.rule if route else "",
            reason=route.reason if route else "",
            failover=route.failover if route else None,
            scores=dict(route.scores) if route else {},
            prompt_tokens=u.prompt_tokens,
            completion_tokens=u.completion_tokens,
            ttft_s=u.ttft_s,
            decode_tokens_per_s=u.decode_tokens_per_s,
            cached_prompt_tokens=u.cached_prompt_tokens,
            draft_tokens_accepted=u.draft_tokens_accepted,
            peak_memory_bytes=u.peak_memory_bytes,
        )


@dataclass(slots=True)
class StoredMessage:
    id: int
    conversation_id: str
    role: str
    content: str
    status: MessageStatus
    created_at: float
    error: str = ""
    """The one-line message shown when the answer failed (status "error")."""
    route: StoredRoute | None = None


# --- the store ------------------------------------------------------------------------------


_MESSAGES_WITH_ROUTES = (
    "SELECT m.*, r.backend AS r_backend, r.model AS r_model, r.adapter AS r_adapter,"
    " r.finish_reason, r.rule, r.reason, r.failover, r.scores, r.prompt_tokens,"
    " r.completion_tokens, r.ttft_s, r.decode_tokens_per_s, r.cached_prompt_tokens,"
    " r.draft_tokens_accepted, r.peak_memory_bytes"
    " FROM messages m LEFT JOIN routes r ON r.message_id = m.id"
)
"""Messages with their answer's route record (NULLs for a question or an unfinished answer)."""


class Store(PartsStore):
    """The conversation store. One per process; every method commits before it returns."""

    def __init__(
        self, db: sqlite3.Connection, path: Path | None, lease: WriterLease | None = None
    ) -> None:
        self._db = db
        self.path = path
        self._lease = lease or WriterLease.acquire(None)
        self.recovered = 0
        """Answers found still streaming from an earlier run and marked incomplete on open."""

    @classmethod
    def open(cls, path: Path | str | None) -> Store:
        """Open (or create) the store at `path` (None: in memory), migrate it, and mark
        answers a previous run left streaming as incomplete."""
        if path is not None:
            path = Path(path)
            _private_database(path)
        db = sqlite3.connect(str(path) if path else ":memory:", isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a committed transaction survives a killed process (only a power cut may
        # lose the last commits), at a fraction of FULL's fsync cost while streaming.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        db.execute("PRAGMA busy_timeout=5000")
        store = cls(db, path, WriterLease.acquire(path))
        store._migrate()
        store.recovered = store._mark_incomplete()
        return store

    def close(self) -> None:
        self._db.close()
        self._lease.release()

    def _migrate(self) -> None:
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS migrations (name TEXT PRIMARY KEY, applied_at REAL)"
        )
        done = {r["name"] for r in self._db.execute("SELECT name FROM migrations")}
        for migration in MIGRATIONS:
            if migration.__name__ in done:
                continue
            with self._db:
                self._db.execute("BEGIN")
                migration(self._db)
                self._db.execute(
                    "INSERT INTO migrations VALUES (?, ?)", (migration.__name__, time.time())
                )

    def _mark_incomplete(self) -> int:
        """Mark the answers whose chat is gone as incomplete; another chat running on the
        same file keeps streaming its own."""
        writers = [
            r["writer"]
            for r in self._db.execute(
                "SELECT DISTINCT writer FROM messages WHERE status = 'streaming'"
            )
        ]
        gone = [w for w in writers if w != self._lease.id and not writer_alive(self.path, w)]
        marked = 0
        for writer in gone:
            cur = self._db.execute(
                "UPDATE messages SET status = 'incomplete' WHERE status = 'streaming'"
                " AND writer = ?",
                (writer,),
            )
            marked += cur.rowcount
        return marked

    def applied_migrations(self) -> list[str]:
        return [r["name"] for r in self._db.execute("SELECT name FROM migrations ORDER BY rowid")]

    # --- conversations ---

    def create_conversation(self, title: str = "New conversation") -> Conversation:
        now = time.time()
        conv = Conversation(uuid.uuid4().hex, title, now, now)
        self._db.execute(
            "INSERT INTO conversations (id, title, created_at, updated_at) VALUES (?, ?, ?, ?)",
            (conv.id, conv.title, now, now),
        )
        return conv

    def conversations(self) -> list[Conversation]:
        """All conversations, the most recently active first."""
        rows = self._db.execute("SELECT * FROM conversations ORDER BY updated_at DESC")
        return [self._conversation(r) for r in rows]

    def conversation(self, conversation_id: str) -> Conversation | None:
        row = self._db.execute(
            "SELECT * FROM conversations WHERE id = ?", (conversation_id,)
        ).fetchone()
        return self._conversation(row) if row else None

    @staticmethod
    def _conversation(row: sqlite3.Row) -> Conversation:
        return Conversation(
            id=row["id"],
            title=row["title"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            system_prompt=row["system_prompt"],
            adapter=row["adapter"],
            local_only=bool(row["local_only"]),
        )

    def update_conversation(
        self,
        conversation_id: str,
        *,
        title: str | None = None,
        system_prompt: str | None = None,
        adapter: str | None = None,
        local_only: bool | None = None,
    ) -> None:
        """Change the given settings of one conversation; None leaves a setting as it is."""
        changes = {
            "title": title,
            "system_prompt": system_prompt,
            "adapter": adapter,
            "local_only": None if local_only is None else int(local_only),
        }
        for column, value in changes.items():
            if value is not None:
                self._db.execute(
                    f"UPDATE conversations SET {column} = ? WHERE id = ?",
                    (value, conversation_id),
                )

    def delete_conversation(self, conversation_id: str) -> None:
        self._db.execute("DELETE FROM conversations WHERE id = ?", (conversation_id,))

    def _touch(self, conversation_id: str) -> None:
        self._db.execute(
            "UPDATE conversations SET updated_at = ? WHERE id = ?", (time.time(), conversation_id)
        )

    # --- messages ---

    def add_message(
        self,
        conversation_id: str,
        role: str,
        content: str,
        status: MessageStatus = "complete",
    ) -> StoredMessage:
        now = time.time()
        cur = self._db.execute(
            "INSERT INTO messages (conversation_id, role, content, status, created_at, writer)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            (conversation_id, role, content, status, now, self._lease.id),
        )
        self._touch(conversation_id)
        assert cur.lastrowid is not None
        return StoredMessage(cur.lastrowid, conversation_id, role, content, status, now)

    def save_partial(self, message_id: int, content: str) -> None:
        """Store the text an answer has so far (called while it streams)."""
        self._db.execute("UPDATE messages SET content = ? WHERE id = ?", (content, message_id))

    def finish_message(
        self,
        message_id: int,
        content: str,
        status: MessageStatus,
        *,
        final: Final | None = None,
        error: str = "",
    ) -> None:
        """Store an answer's last text and status and, when it has one, its route record."""
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute(
                "UPDATE messages SET content = ?, status = ?, error = ? WHERE id = ?",
                (content, status, error, message_id),
            )
            if final is not None:
                self._save_route(message_id, StoredRoute.from_final(final))

    def _save_route(self, message_id: int, r: StoredRoute) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO routes VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                message_id,
                r.backend,
                r.model,
                r.adapter,
                r.finish_reason,
                r.rule,
                r.reason,
                r.failover,
                json.dumps(r.scores),
                r.prompt_tokens,
                r.completion_tokens,
                r.ttft_s,
                r.decode_tokens_per_s,
                r.cached_prompt_tokens,
                r.draft_tokens_accepted,
                r.peak_memory_bytes,
            ),
        )

    def delete_messages_from(self, conversation_id: str, message_id: int) -> None:
        """Delete a message and everything after it (regenerate, edit and resend)."""
        self._db.execute(
            "DELETE FROM messages WHERE conversation_id = ? AND id >= ?",
            (conversation_id, message_id),
        )

    def messages(self, conversation_id: str) -> list[StoredMessage]:
        rows = self._db.execute(
            _MESSAGES_WITH_ROUTES + " WHERE m.conversation_id = ? ORDER BY m.id",
            (conversation_id,),
        )
        return [self._message(r) for r in rows]

    def message(self, message_id: int) -> StoredMessage | None:
        row = self._db.execute(_MESSAGES_WITH_ROUTES + " WHERE m.id = ?", (message_id,)).fetchone()
        return None if row is None else self._message(row)

    @staticmethod
    def _message(row: sqlite3.Row) -> StoredMessage:
        route = None
        if row["r_backend"] is not None:
            route = StoredRoute(
                backend=row["r_backend"],
                model=row["r_model"],
                adapter=row["r_adapter"],
                finish_reason=row["finish_reason"],
                rule=row["rule"],
                reason=row["reason"],
                failover=row["failover"],
                scores=json.loads(row["scores"]),
                prompt_tokens=row["prompt_tokens"],
                completion_tokens=row["completion_tokens"],
                ttft_s=row["ttft_s"],
                decode_tokens_per_s=row["decode_tokens_per_s"],
                cached_prompt_tokens=row["cached_prompt_tokens"],
                draft_tokens_accepted=row["draft_tokens_accepted"],
                peak_memory_bytes=row["peak_memory_bytes"],
            )
        return StoredMessage(
            id=row["id"],
            conversation_id=row["conversation_id"],
            role=row["role"],
            content=row["content"],
            status=row["status"],
            created_at=row["created_at"],
            error=row["error"],
            route=route,
        )

    # --- search ---

    def search(self, text: str, limit: int = 50) -> list[tuple[Conversation, StoredMessage]]:
        """Messages containing `text` (case-insensitive), newest first, with their
        conversation."""
        pattern = "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = self._db.execute(
            "SELECT id, conversation_id FROM messages WHERE content LIKE ? ESCAPE '\\'"
            " ORDER BY id DESC LIMIT ?",
            (pattern, limit),
        ).fetchall()
        found: list[tuple[Conversation, StoredMessage]] = []
        for row in rows:
            conv = self.conversation(row["conversation_id"])
            msg = self.message(row["id"])
            if conv is not None and msg is not None:
                found.append((conv, msg))
        return found
