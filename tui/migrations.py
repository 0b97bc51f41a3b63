"""The conversation store's schema, as numbered, append-only migrations.

Each is a function named `mNNN_what` that changes the schema; `Store.open()` applies the ones
not yet recorded in the `migrations` table, in order. Never edit one that has shipped: add the
next.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

__all__ = ["MIGRATIONS"]


def _run(db: sqlite3.Connection, script: str) -> None:
    # Statement by statement: executescript() would commit, and a migration must be applied
    # together with its record in `migrations`, or not at all.
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def m001_initial(db: sqlite3.Connection) -> None:
    _run(
        db,
        """
        CREATE TABLE conversations (
            id TEXT PRIMARY KEY,
            title TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            system_prompt TEXT NOT NULL DEFAULT '',
            adapter TEXT NOT NULL DEFAULT '',
            local_only INTEGER NOT NULL DEFAULT 0
        );
        CREATE TABLE messages (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            role TEXT NOT NULL,
            content TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'complete',
            error TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL
        );
        CREATE INDEX messages_by_conversation ON messages(conversation_id, id);
        CREATE TABLE routes (
            message_id INTEGER PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
            backend TEXT NOT NULL,
            model TEXT NOT NULL,
            adapter TEXT,
            finish_reason TEXT NOT NULL,
            rule TEXT NOT NULL,
            reason TEXT NOT NULL,
            failover TEXT,
            scores TEXT NOT NULL,
            prompt_tokens INTEGER NOT NULL,
            completion_tokens INTEGER NOT NULL,
            ttft_s REAL,
            decode_tokens_per_s REAL,
            cached_prompt_tokens INTEGER NOT NULL,
            draft_tokens_accepted INTEGER NOT NULL,
            peak_memory_bytes INTEGER
        );
        """,
    )


def m002_answer_writers(db: sqlite3.Connection) -> None:
    # Which running chat writes an answer that is still streaming: a second chat on the same
    # file must not mark it incomplete (tui/writers.py). '' for answers from before.
    _run(db, "ALTER TABLE messages ADD COLUMN writer TEXT NOT NULL DEFAULT ''")


def m003_answer_parts(db: sqlite3.Connection) -> None:
    # A thinking model's reasoning and the tool calls of an answer, kept apart from its text
    # (which is what goes back to the model and into exports): one row per answer that has
    # either. tool_calls is a JSON list of {"id", "name", "arguments"}.
    _run(
        db,
        """
        CREATE TABLE answer_parts (
            message_id INTEGER PRIMARY KEY REFERENCES messages(id) ON DELETE CASCADE,
            reasoning TEXT NOT NULL DEFAULT '',
            thinking_s REAL,
            reasoning_tokens INTEGER NOT NULL DEFAULT 0,
            tool_calls TEXT NOT NULL DEFAULT '[]'
        )
        """,
    )


def m004_conversation_thinking(db: sqlite3.Connection) -> None:
    # A conversation's thinking switch (F10): 1 on, 0 off; no row: the model's default.
    _run(
        db,
        """
        CREATE TABLE conversation_thinking (
            conversation_id TEXT PRIMARY KEY REFERENCES conversations(id) ON DELETE CASCADE,
            think INTEGER NOT NULL
        )
        """,
    )


def m005_conversation_tools(db: sqlite3.Connection) -> None:
    # Which MCP servers' tools a conversation offers the model (F11): 1 on, 0 off; no row:
    # the server's `enabled` in config.toml. An answer's tool results live in
    # answer_parts.tool_calls (a "result" beside each call's arguments).
    _run(
        db,
        """
        CREATE TABLE conversation_tools (
            conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
            server TEXT NOT NULL,
            enabled INTEGER NOT NULL,
            PRIMARY KEY (conversation_id, server)
        )
        """,
    )


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    m001_initial,
    m002_answer_writers,
    m003_answer_parts,
    m004_conversation_thinking,
    m005_conversation_tools,
)
"""Applied in order; each one's function name is recorded in the `migrations` table."""
