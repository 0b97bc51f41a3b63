"""Benchmark of the chat app: how soon it paints, and how far the screen lags a fast stream.

- first_paint_ms: from starting the `tandem chat` process (in a pseudo-terminal, with the test
  model loading in the background) to the app's first frame (Textual's Ready event).
  Median of several starts. Target < 500 ms.
- render_lag_ms_p95: a synthetic answer streams at 200 tokens/s into the real app (headless);
  for every token, the time from its arrival to the first screen render that includes it
  (the text written into the answer's widgets and the compositor rendered). Target < 50 ms.
  Pooled over `--runs` answers: one answer's p95 moved between 26 and 44 ms from run to run
  on an idle machine here.
- thinking_render_lag_ms_p95: the same for a thinking answer: `--thinking` reasoning tokens
  first (into the collapsed thinking block: a token counts as shown at the first render after
  the block took it), then the answer; pooled over both. Target < 50 ms.

Usage: python scripts/bench/tui.py [--starts N] [--tokens N] [--runs N]. The last line
printed is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import json
import os
import pty
import statistics
import struct
import subprocess
import sys
import tempfile
import termios
import time
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from router.protocol import (  # noqa: E402
    Capabilities,
    ChatRequest,
    Final,
    Health,
    ReasoningDelta,
    StreamEvent,
    TextDelta,
    Usage,
)

CHILD = """
import os, sys, time
import tui.app as app_module
original = app_module.TandemApp.on_ready
def on_ready(self):
    original(self)
    with open(os.environ["BENCH_OUT"], "w") as f:
        f.write(repr(self.first_paint_at))
    os._exit(0)  # the model is still loading in the background: no need to wait for it
app_module.TandemApp.on_ready = on_ready
from tui.commands.chat import main
sys.exit(main(sys.argv[1:]))
"""


def first_paint_ms(model: Path, starts: int) -> list[float]:
    """Milliseconds from process start to first frame, once per start."""
    results = []
    for _ in range(starts):
        with tempfile.TemporaryDirectory() as home:
            out = Path(home) / "painted"
            env = {
                **os.environ,
                "TANDEM_HOME": home,
                "BENCH_OUT": str(out),
                "TERM": "xterm-256color",
            }
            master, slave = pty.openpty()
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 32, 110, 0, 0))
            started = time.time()
            proc = subprocess.Popen(
                [sys.executable, "-c", CHILD, "--model", str(model)],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                env=env,
                cwd=ROOT,
            )
            os.close(slave)
            os.set_blocking(master, False)
            deadline = time.monotonic() + 60
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    os.read(master, 65536)  # keep the terminal drained
                except BlockingIOError:
                    time.sleep(0.005)
                except OSError:
                    break
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            os.close(master)
            if out.exists():
                results.append((float(out.read_text()) - started) * 1000)
    return results


class SyntheticStream:
    """Streams a long Markdown answer at a fixed token rate and records when each token
    arrived (the fake backend a benchmark of the screen needs: no model is that steady)."""

    name = "local"
    ready = True

    def __init__(self, tokens: int, rate: float, thinking: int = 0) -> None:
        self.rate = rate
        self.pieces = _markdown_tokens(tokens)
        self.thoughts = [w.replace("\n", " ") for w in _markdown_tokens(thinking)]
        self.arrivals: list[tuple[int, float]] = []
        """(end offset in the answer, arrival time) per token."""
        self.thought_arrivals: list[tuple[int, float]] = []
        """(end offset in the reasoning, arrival time) per reasoning token."""

    async def stream(self, request: ChatRequest) -> AsyncGenerator[StreamEvent, None]:
        start = time.perf_counter()
        offset = 0
        for i, piece in enumerate(self.thoughts):
            delay = start + i / self.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            offset += len(piece)
            self.thought_arrivals.append((offset, time.perf_counter()))
            yield ReasoningDelta(piece)
        start, offset = time.perf_counter(), 0
        for i, piece in enumerate(self.pieces):
            delay = start + i / self.rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            offset += len(piece)
            self.arrivals.append((offset, time.perf_counter()))
            yield TextDelta(piece)
        yield Final("stop", Usage(10, len(self.pieces)), "local", "synthetic")

    async def health(self) -> Health:
        return Health(True)

    def capabilities(self) -> Capabilities:
        return Capabilities("synthetic", 4096)

    async def start(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


def _markdown_tokens(n: int) -> list[str]:
    paragraph = (
        "The river runs **slowly** through the valley, past the mill and the old bridge, "
        "and reaches the sea after a long day.\n\n"
        "- first point about `code`\n- second point\n\n"
        "```python\ndef add(a, b):\n    return a + b\n```\n\n"
    )
    words: list[str] = []
    while len(words) < n:
        words += [w + " " if not w.endswith("\n") else w for w in paragraph.split(" ")]
    return words[:n]


async def render_lag(tokens: int, rate: float, thinking: int = 0) -> list[float]:
    """Per-token delay (ms) from arrival to the first render that shows it (reasoning tokens
    first when `thinking`: shown once the collapsed block has them)."""
    from router.hybrid import HybridBackend
    from tui.app import TandemApp
    from tui.compose import Composition
    from tui.config import Config
    from tui.store import Store
    from tui.widgets.streamed import StreamedMarkdown
    from tui.widgets.thinking import ThinkingBlock

    shown = {"chars": 0, "thought": 0}
    original_write = StreamedMarkdown.write
    original_add = ThinkingBlock.add

    def add(self: ThinkingBlock, text: str) -> None:
        original_add(self, text)
        shown["thought"] = len(self.text)

    ThinkingBlock.add = add  # type: ignore[method-assign]

    async def write(self: StreamedMarkdown, text: str) -> None:
        # Once written, the text is in the answer's widgets: the next frame draws it.
        await original_write(self, text)
        shown["chars"] = len(self.source)

    StreamedMarkdown.write = write  # type: ignore[method-assign]
    backend = SyntheticStream(tokens, rate, thinking)
    lags: list[float] = []
    with tempfile.TemporaryDirectory() as home:
        os.environ["TANDEM_HOME"] = home
        app = TandemApp(
            store=Store.open(Path(home) / "c.db"),
            config=Config(max_tokens=tokens + 10),
            composition=Composition(
                backend=HybridBackend(backend, None), local=backend, model_label="synthetic"
            ),
        )
        next_token = next_thought = 0
        original_display = app._display

        def display(screen: Any, renderable: Any) -> None:
            nonlocal next_token, next_thought
            original_display(screen, renderable)
            if renderable is None:
                return
            now = time.perf_counter()
            while next_thought < len(backend.thought_arrivals):
                end, arrived = backend.thought_arrivals[next_thought]
                if end > shown["thought"]:
                    break
                lags.append((now - arrived) * 1000)
                next_thought += 1
            while next_token < len(backend.arrivals):
                end, arrived = backend.arrivals[next_token]
                if end > shown["chars"]:
                    break
                lags.append((now - arrived) * 1000)
                next_token += 1

        app._display = display  # type: ignore[method-assign]
        async with app.run_test(size=(110, 40)) as pilot:
            await pilot.pause()
            await pilot.press(*"go", "enter")
            while app.chat.answer_worker is None or app.chat.streaming:
                await asyncio.sleep(0.05)
            await pilot.pause(0.2)
    StreamedMarkdown.write = original_write  # type: ignore[method-assign]
    ThinkingBlock.add = original_add  # type: ignore[method-assign]
    return lags


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=5, help="process starts to time")
    parser.add_argument("--tokens", type=int, default=1000, help="tokens in the synthetic answer")
    parser.add_argument("--rate", type=float, default=200.0, help="tokens per second")
    parser.add_argument("--runs", type=int, default=3, help="answers streamed, lags pooled")
    parser.add_argument("--thinking", type=int, default=300,
                        help="reasoning tokens before the thinking answer (0: no such run)")
    args = parser.parse_args()
    from scripts.testmodels import build

    paints = first_paint_ms(build().target, args.starts)
    lags: list[float] = []
    for _ in range(args.runs):
        lags += asyncio.run(render_lag(args.tokens, args.rate))
    lags.sort()
    thought: list[float] = []
    for _ in range(args.runs if args.thinking else 0):
        thought += asyncio.run(render_lag(args.tokens, args.rate, args.thinking))
    thought.sort()
    result = {
        "first_paint_ms": round(statistics.median(paints), 1) if paints else None,
        "first_paint_ms_all": [round(p, 1) for p in paints],
        "render_lag_ms_p95": round(lags[int(0.95 * (len(lags) - 1))], 1) if lags else None,
        "render_lag_ms_p50": round(statistics.median(lags), 1) if lags else None,
        "render_lag_ms_max": round(max(lags), 1) if lags else None,
        "thinking_render_lag_ms_p95": (
            round(thought[int(0.95 * (len(thought) - 1))], 1) if thought else None
        ),
        "thinking_tokens_per_answer": args.thinking,
        "tokens_streamed": args.tokens * args.runs,
        "tokens_seen_on_screen": len(lags),
        "stream_tokens_per_s": args.rate,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
