"""The conversation store: real SQLite files, numbered migrations, nothing lost on a crash."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

from router.protocol import Final, Route, Usage
from tui.export import export_conversation
from tui.store import MIGRATIONS, Store

EXPECTED_SCHEMA = {
    "conversations": [
        "id",
        "title",
        "created_at",
        "updated_at",
        "system_prompt",
        "adapter",
        "local_only",
    ],
    "messages": [
        "id",
        "conversation_id",
        "role",
        "content",
        "status",
        "error",
        "created_at",
        "writer",
    ],
    "migrations": ["name", "applied_at"],
    "answer_parts": ["message_id", "reasoning", "thinking_s", "reasoning_tokens", "tool_calls"],
    "conversation_thinking": ["conversation_id", "think"],
    "conversation_tools": ["conversation_id", "server", "enabled"],
    "routes": [
        "message_id",
        "backend",
        "model",
        "adapter",
        "finish_reason",
        "rule",
        "reason",
        "failover",
        "scores",
        "prompt_tokens",
        "completion_tokens",
        "ttft_s",
        "decode_tokens_per_s",
        "cached_prompt_tokens",
        "draft_tokens_accepted",
        "peak_memory_bytes",
    ],
}


def _final() -> Final:
    return Final(
        "stop",
        Usage(12, 7, ttft_s=0.25, decode_tokens_per_s=40.0, cached_prompt_tokens=3),
        backend="cloud",
        model="target",
        adapter="legal",
        route=Route(
            "cloud",
            "complexity",
            "hard question → cloud",
            {"complexity": 0.8},
            failover="continued on the cloud: device busy",
        ),
    )


def test_a_blank_database_migrates_to_the_exact_schema(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "c.db")
    store.close()
    db = sqlite3.connect(tmp_path / "c.db")
    tables = {
        name: [row[1] for row in db.execute(f"PRAGMA table_info({name})")]
        for (name,) in db.execute(
            "SELECT name FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
        )
    }
    assert tables == EXPECTED_SCHEMA
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    applied = [r[0] for r in db.execute("SELECT name FROM migrations ORDER BY rowid")]
    assert applied == [m.__name__ for m in MIGRATIONS]


def test_reopening_applies_no_migration_twice(tmp_path: Path) -> None:
    Store.open(tmp_path / "c.db").close()
    store = Store.open(tmp_path / "c.db")
    assert store.applied_migrations() == [m.__name__ for m in MIGRATIONS]


# A chat that is killed (SIGKILL) while its answer streams.
KILLED_WRITER = """
import os, signal, sys
from tui.store import Store
store = Store.open(sys.argv[1])
conv = store.create_conversation("t")
store.add_message(conv.id, "user", "Tell me about the river.")
answer = store.add_message(conv.id, "assistant", "", "streaming")
store.save_partial(answer.id, "The river")
print(answer.id, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_an_answer_left_streaming_is_marked_incomplete_on_reopen(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(tmp_path / "c.db")],
        capture_output=True, text=True, timeout=60, cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    answer_id = int(done.stdout)
    reopened = Store.open(tmp_path / "c.db")
    assert reopened.recovered == 1
    msg = reopened.message(answer_id)
    assert msg is not None
    assert (msg.status, msg.content) == ("incomplete", "The river")
    assert list((tmp_path / "c.db.writers").iterdir()) != []  # only the reopened store's own
    reopened.close()
    assert list((tmp_path / "c.db.writers").iterdir()) == []


def test_a_second_chat_on_the_same_file_leaves_the_running_answer_alone(tmp_path: Path) -> None:
    first = Store.open(tmp_path / "c.db")
    conv = first.create_conversation("t")
    first.add_message(conv.id, "user", "Tell me about the river.")
    answer = first.add_message(conv.id, "assistant", "", "streaming")
    first.save_partial(answer.id, "The river")
    second = Store.open(tmp_path / "c.db")  # another window, while the first still streams
    assert second.recovered == 0
    msg = second.message(answer.id)
    assert msg is not None and msg.status == "streaming"
    first.finish_message(answer.id, "The river runs to the sea.", "complete")
    msg = second.message(answer.id)
    assert msg is not None and msg.status == "complete"
    # Once the first chat is gone, what it left streaming is recovered by the next one.
    other = first.add_message(conv.id, "assistant", "Half", "streaming")
    first.close()
    third = Store.open(tmp_path / "c.db")
    assert third.recovered == 1
    msg = third.message(other.id)
    assert msg is not None and msg.status == "incomplete"
    second.close()
    third.close()


def test_the_route_record_and_usage_round_trip(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "c.db")
    conv = store.create_conversation()
    answer = store.add_message(conv.id, "assistant", "", "streaming")
    store.finish_message(answer.id, "Paris.", "complete", final=_final())
    msg = Store.open(tmp_path / "c.db").message(answer.id)
    assert msg is not None and msg.route is not None
    r = msg.route
    assert (r.backend, r.rule, r.reason, r.adapter) == (
        "cloud",
        "complexity",
        "hard question → cloud",
        "legal",
    )
    assert r.failover == "continued on the cloud: device busy"
    assert r.scores == {"complexity": 0.8}
    assert (r.prompt_tokens, r.completion_tokens, r.ttft_s, r.cached_prompt_tokens) == (
        12,
        7,
        0.25,
        3,
    )


def test_search_is_case_insensitive_and_takes_wildcards_literally(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "c.db")
    a = store.create_conversation("geography")
    store.add_message(a.id, "user", "What is the capital of France?")
    b = store.create_conversation("maths")
    store.add_message(b.id, "user", "What is 50% of 10?")
    found = store.search("CAPITAL of")
    assert [(c.title, m.content) for c, m in found] == [
        ("geography", "What is the capital of France?")
    ]
    assert [c.title for c, _ in store.search("50%")] == ["maths"]
    assert [m.content for _, m in store.search("%")] == ["What is 50% of 10?"]


def test_deleting_a_conversation_deletes_its_messages_and_routes(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "c.db")
    conv = store.create_conversation()
    answer = store.add_message(conv.id, "assistant", "", "streaming")
    store.finish_message(answer.id, "x", "complete", final=_final())
    store.delete_conversation(conv.id)
    assert store.conversations() == []
    assert store.message(answer.id) is None
    assert store.search("x") == []


def test_export_writes_valid_markdown_and_json(tmp_path: Path) -> None:
    store = Store.open(tmp_path / "c.db")
    conv = store.create_conversation("Capitals & more")
    store.update_conversation(conv.id, system_prompt="Be brief.")
    store.add_message(conv.id, "user", "What is the capital of France?")
    answer = store.add_message(conv.id, "assistant", "", "streaming")
    store.finish_message(answer.id, "The capital of France is Paris.", "complete", final=_final())
    md, js = export_conversation(store, conv.id, tmp_path / "out")
    data = json.loads(js.read_text())
    assert data["conversation"]["title"] == "Capitals & more"
    assert [m["content"] for m in data["messages"]] == [
        "What is the capital of France?",
        "The capital of France is Paris.",
    ]
    assert data["messages"][1]["route"]["reason"] == "hard question → cloud"
    text = md.read_text()
    assert text.startswith("# Capitals & more\n")
    assert "## User\n\nWhat is the capital of France?" in text
    assert "## Assistant\n\nThe capital of France is Paris." in text
    assert "continued on the cloud: device busy" in text
