"""What this package hands mlx-lm's `train()` besides the batches: a reporting callback that
turns its reports into `Progress`, a Ctrl-C handler that asks for a clean stop, and a muzzle for
its own progress bar.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["Progress", "Reporter", "quiet_mlx_ui", "stop_on_sigint"]


@dataclass(frozen=True, slots=True)
class Progress:
    """One report from the trainer: a training-loss window or a validation loss."""

    step: int
    total: int
    train_loss: float | None = None
    val_loss: float | None = None
    tokens_per_s: float | None = None
    eta_s: float | None = None
    peak_memory_gb: float | None = None
    trained_tokens: int = 0


class Reporter:
    """mlx-lm's TrainingCallback protocol → `Progress` for the caller, plus run totals."""

    def __init__(self, start: int, total: int, emit: Callable[[Progress], None]) -> None:
        self.start, self.total, self.emit = start, total, emit
        self.trained_tokens = 0
        self.train_time = 0.0
        self.last_train_loss: float | None = None
        self.last_val_loss: float | None = None
        self.first_val_loss: float | None = None
        self.peak_memory_gb = 0.0

    def on_train_loss_report(self, info: dict[str, Any]) -> None:
        window = int(info["trained_tokens"]) - self.trained_tokens
        self.trained_tokens = int(info["trained_tokens"])
        tps = float(info["tokens_per_second"])
        self.train_time += window / tps if tps > 0 else 0.0
        step = self.start + int(info["iteration"])
        its = float(info["iterations_per_second"])
        self.last_train_loss = float(info["train_loss"])
        self.peak_memory_gb = max(self.peak_memory_gb, float(info["peak_memory"]))
        self.emit(
            Progress(
                step=step,
                total=self.total,
                train_loss=self.last_train_loss,
                tokens_per_s=tps,
                eta_s=(self.total - step) / its if its > 0 else None,
                peak_memory_gb=float(info["peak_memory"]),
                trained_tokens=self.trained_tokens,
            )
        )

    def on_val_loss_report(self, info: dict[str, Any]) -> None:
        self.last_val_loss = float(info["val_loss"])
        if self.first_val_loss is None:
            self.first_val_loss = self.last_val_loss
        self.emit(Progress(step=self.start + int(info["iteration"]), total=self.total,
                           val_loss=self.last_val_loss))

    @property
    def tokens_per_s(self) -> float | None:
        return self.trained_tokens / self.train_time if self.train_time > 0 else None


@contextmanager
def stop_on_sigint(request_stop: Callable[[], None], say: Callable[[str], None]) -> Iterator[None]:
    """First Ctrl-C: finish the current step, save, stop. A second one aborts at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        say("stopping after this step to save a checkpoint (Ctrl-C again to abort)")
        request_stop()

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextmanager
def quiet_mlx_ui() -> Iterator[None]:
    """mlx-lm's trainer draws its own rich progress bar; ours replaces it."""
    from mlx_lm.cli_ui import make_console

    console = make_console()
    before = console.quiet
    console.quiet = True
    try:
        yield
    finally:
        console.quiet = before
