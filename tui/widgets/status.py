"""The status bar (bottom line): local model and memory, cloud state, routing mode."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from textual.reactive import reactive
from textual.widgets import Static

__all__ = ["StatusBar", "process_memory_bytes"]


def process_memory_bytes() -> int | None:
    """This process's resident memory (the model lives in it), or None if unknown."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024  # macOS: bytes, Linux: KiB
    except (ImportError, OSError):
        return None


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 2**20:.0f} MB"


BOUND = {
    "local": "local_state",
    "model": "model_label",
    "cloud": "cloud_state",
    "mode": "routing_mode",
}
"""Each field → the app's reactive it follows (when the app has it): the bar reads the app's
state, the app never reaches into the bar."""
MEMORY_EVERY_S = 2.0


class StatusBar(Static):
    """One line. local, model, cloud and mode follow the app's reactives of the names in
    BOUND; `pin` belongs to the conversation shown (the chat screen sets it)."""

    local = reactive("starting…", layout=False)
    model = reactive("", layout=False)
    cloud = reactive("off", layout=False)
    mode = reactive("auto", layout=False)
    pin = reactive("", layout=False)

    def __init__(self, **kwargs: object) -> None:
        super().__init__("", markup=False, **kwargs)  # type: ignore[arg-type]

    def on_mount(self) -> None:
        for field, source in BOUND.items():
            if hasattr(type(self.app), source):
                self.watch(self.app, source, self._follower(field))
        self.set_interval(MEMORY_EVERY_S, self.refresh_text)  # the memory figure moves
        self.refresh_text()

    def _follower(self, field: str) -> Callable[[str], None]:
        def follow(value: str) -> None:
            setattr(self, field, value)

        return follow

    def _watch_fields(self) -> None:
        self.refresh_text()

    watch_local = watch_model = watch_cloud = watch_mode = watch_pin = _watch_fields

    def refresh_text(self) -> None:
        model = f" {self.model}" if self.model else ""
        parts = [
            f"device{model}: {self.local} · mem {_mb(process_memory_bytes())}",
            f"cloud: {self.cloud}",
            f"mode: {self.mode}",
        ]
        if self.pin:
            parts.append(self.pin)
        parts.append("^P commands")
        self.update("  │  ".join(parts))
