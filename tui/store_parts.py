"""An answer's reasoning and tool calls in the conversation store, kept apart from its text
(migration m003_answer_parts): the text is what goes back to the model, exports and search;
the reasoning is shown collapsed and sent back only as the model's template decides.
Also each conversation's switches: thinking (m004) and its MCP servers (m005)."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from typing import Any

__all__ = ["AnswerParts", "PartsStore"]


@dataclass(frozen=True, slots=True)
class AnswerParts:
    reasoning: str = ""
    thinking_s: float | None = None
    reasoning_tokens: int = 0
    tool_calls: tuple[dict[str, str], ...] = ()
    """Each {"id", "name", "arguments"} (arguments as JSON text), and "result" once the chat
    ran it (what the model read back)."""


class PartsStore:
    """Mixed into `tui.store.Store` (which owns `_db` and commits)."""

    _db: sqlite3.Connection

    def save_parts(self, message_id: int, parts: AnswerParts) -> None:
        """Store (or replace) an answer's reasoning and tool calls; nothing for a plain one."""
        if not parts.reasoning and not parts.tool_calls:
            return
        self._db.execute(
            "INSERT OR REPLACE INTO answer_parts VALUES (?, ?, ?, ?, ?)",
            (message_id, parts.reasoning, parts.thinking_s, parts.reasoning_tokens,
             json.dumps(list(parts.tool_calls))),
        )

    def parts(self, message_id: int) -> AnswerParts:
        row = self._db.execute(
            "SELECT * FROM answer_parts WHERE message_id = ?", (message_id,)
        ).fetchone()
        return AnswerParts() if row is None else _parts(row)

    def thinking(self, conversation_id: str) -> bool | None:
        """The conversation's thinking switch: True, False, or None (the model's default)."""
        row = self._db.execute(
            "SELECT think FROM conversation_thinking WHERE conversation_id = ?",
            (conversation_id,),
        ).fetchone()
        return None if row is None else bool(row["think"])

    def set_thinking(self, conversation_id: str, think: bool | None) -> None:
        if think is None:
            self._db.execute(
                "DELETE FROM conversation_thinking WHERE conversation_id = ?", (conversation_id,)
            )
        else:
            self._db.execute(
                "INSERT OR REPLACE INTO conversation_thinking VALUES (?, ?)",
                (conversation_id, int(think)),
            )

    def tool_servers(self, conversation_id: str) -> dict[str, bool]:
        """The conversation's own choices of MCP servers (F11); others follow config.toml."""
        rows = self._db.execute(
            "SELECT server, enabled FROM conversation_tools WHERE conversation_id = ?",
            (conversation_id,),
        )
        return {r["server"]: bool(r["enabled"]) for r in rows}

    def set_tool_servers(self, conversation_id: str, choices: dict[str, bool]) -> None:
        self._db.executemany(
            "INSERT OR REPLACE INTO conversation_tools VALUES (?, ?, ?)",
            [(conversation_id, server, int(on)) for server, on in choices.items()],
        )

    def parts_of(self, conversation_id: str) -> dict[int, AnswerParts]:
        """Every answer's parts in a conversation, by message id (one query)."""
        rows = self._db.execute(
            "SELECT p.* FROM answer_parts p JOIN messages m ON m.id = p.message_id"
            " WHERE m.conversation_id = ?",
            (conversation_id,),
        )
        return {r["message_id"]: _parts(r) for r in rows}


def _parts(row: Any) -> AnswerParts:
    calls = json.loads(row["tool_calls"] or "[]")
    return AnswerParts(
        reasoning=row["reasoning"],
        thinking_s=row["thinking_s"],
        reasoning_tokens=row["reasoning_tokens"],
        tool_calls=tuple({k: str(v) for k, v in c.items()} for c in calls),
    )
