"""Where tandem keeps things, from the platform's config and data directories.

`TANDEM_HOME` moves all of it under one folder (the tests use this to keep each run's state in
a temporary folder). Nothing here creates a folder until asked.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Paths", "paths", "private_dir", "write_private"]


@dataclass(frozen=True, slots=True)
class Paths:
    config_dir: Path
    data_dir: Path
    cache_dir: Path

    @property
    def config_file(self) -> Path:
        """The user's settings (TOML). Never holds a secret."""
        return self.config_dir / "config.toml"

    @property
    def models_dir(self) -> Path:
        """Models pulled from the hub or made by `tandem models quantize`."""
        return self.data_dir / "models"

    @property
    def adapters_dir(self) -> Path:
        """Fine-tuned adapters and their metadata."""
        return self.data_dir / "adapters"

    @property
    def database(self) -> Path:
        """The conversation store (SQLite)."""
        return self.data_dir / "conversations.db"

    @property
    def cloud_dir(self) -> Path:
        """Server side: the gateway's hashed keys and users' uploaded adapters."""
        return self.data_dir / "cloud"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"


def private_dir(path: Path) -> Path:
    """Make `path` (and any missing parents) as folders only this user can enter (0700).
    Folders that exist already keep their mode: they may be the user's own."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            folder.mkdir(mode=0o700)
        os.chmod(folder, 0o700)  # mkdir's mode is masked by the umask
    return path


def write_private(path: Path, text: str) -> None:
    """Write a file only this user can read (0600), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)
    os.chmod(path, 0o600)  # an existing file keeps its old mode through os.open


def paths() -> Paths:
    """The folders for this user (or under $TANDEM_HOME when set)."""
    home = os.environ.get("TANDEM_HOME")
    if home:
        root = Path(home).expanduser()
        return Paths(root / "config", root / "data", root / "cache")
    import platformdirs

    return Paths(
        config_dir=Path(platformdirs.user_config_dir("tandem", appauthor=False)),
        data_dir=Path(platformdirs.user_data_dir("tandem", appauthor=False)),
        cache_dir=Path(platformdirs.user_cache_dir("tandem", appauthor=False)),
    )
