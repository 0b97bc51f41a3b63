"""A chat killed with SIGKILL mid-answer loses at most a second: on reopen the answer's text so
far is there, marked incomplete. The real `tandem chat` process, in a pseudo-terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import signal
import sqlite3
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from tui.store import Store

pytestmark = pytest.mark.mlx

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Tell me about the river."

# The real `tandem chat` main, with the engine's deltas slowed to 30 ms each: the test model
# answers in a fifth of a second, before the first once-every-half-second save; a slower
# device is what this test is about (see tests.tui_support.Throttled).
CHILD = """
import sys
from local.engine import LocalEngine
from tests.tui_support import Throttled

original = LocalEngine.stream

def stream(self, request):
    return Throttled.slow(original(self, request), 0.03)

LocalEngine.stream = stream
from tui.commands.chat import main
sys.exit(main(sys.argv[1:]))
"""


def _drain(fd: int) -> None:
    try:
        while os.read(fd, 65536):
            pass
    except (BlockingIOError, OSError):
        pass


def _partial_answer(db: Path) -> tuple[str, str] | None:
    """(status, text) of the newest answer, read the way a second process would."""
    if not db.exists():
        return None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
            row = conn.execute(
                "SELECT status, content FROM messages WHERE role = 'assistant'"
                " ORDER BY id DESC LIMIT 1"
            ).fetchone()
    except sqlite3.Error:
        return None
    return (row[0], row[1]) if row else None


def test_a_killed_chat_keeps_the_partial_answer_marked_incomplete(
    test_models: Any, tmp_path: Path
) -> None:
    env = {**os.environ, "TANDEM_HOME": str(tmp_path), "TERM": "xterm-256color"}
    env["TANDEM_MODEL"] = str(test_models.target)
    db = tmp_path / "data" / "conversations.db"
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, "--max-tokens", "4000"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=ROOT,
        start_new_session=True,
    )
    os.close(slave)
    os.set_blocking(master, False)
    seen: tuple[str, str] | None = None
    try:
        deadline = time.monotonic() + 120
        while not db.exists() and time.monotonic() < deadline:  # the app has painted
            _drain(master)
            time.sleep(0.05)
        time.sleep(0.5)
        os.write(master, PROMPT.encode() + b"\r")
        # Kill as soon as a partial answer is on disk while the answer still streams.
        while time.monotonic() < deadline and proc.poll() is None:
            _drain(master)
            seen = _partial_answer(db)
            if seen and seen[0] == "streaming" and seen[1]:
                break
            time.sleep(0.01)
        assert proc.poll() is None, "the chat exited before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert seen is not None and seen[0] == "streaming", f"no partial answer was saved: {seen}"
    store = Store.open(db)
    assert store.recovered == 1
    conv = store.conversations()[0]
    messages = store.messages(conv.id)
    assert [m.role for m in messages] == ["user", "assistant"]
    assert messages[0].content == PROMPT
    answer = messages[1]
    assert answer.status == "incomplete"
    assert answer.content.startswith(seen[1])  # nothing saved was lost
    store.close()
