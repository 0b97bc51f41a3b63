"""The status bar (bottom line): local model and memory, cloud state, routing mode."""

from __future__ import annotations

import os
import sys

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


class StatusBar(Static):
    """One line; the app sets its fields and it re-renders."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__("", markup=False, **kwargs)  # type: ignore[arg-type]
        self.local = "starting…"
        self.model = ""
        self.cloud = "off"
        self.mode = "auto"
        self.pin = ""

    def set(self, **fields: str) -> None:
        """Change any of local, model, cloud, mode, pin and re-render."""
        for name, value in fields.items():
            setattr(self, name, value)
        self.refresh_text()

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
