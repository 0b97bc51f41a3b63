"""The user's settings: one TOML file in the config directory, overridable by `TANDEM_*`
environment variables (for example `TANDEM_MODE=local-only`).

Secrets never live here: the cloud API key is in the OS keyring (or `TANDEM_CLOUD_API_KEY`).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from router.protocol import TandemError
from tui.mcp.config import McpConfigError, McpServerSpec, parse_servers
from tui.paths import paths

__all__ = [
    "MODES",
    "Config",
    "ConfigError",
    "load_config",
    "save_config",
    "update_config",
    "with_overrides",
]

MODES = ("auto", "local-only", "cloud-preferred")
PRIVACY_ACTIONS = ("keep-local", "redact")
_REGION = re.compile(r"^[A-Za-z]{2}$")
NO_ENV = frozenset({"mcp"})
"""Settings that are tables, which an environment variable cannot hold."""


class ConfigError(TandemError):
    """The config file or an environment variable holds a value tandem cannot use."""


@dataclass(slots=True)
class Config:
    model: str = ""
    """Local model: a folder or hub id. Empty: the default for this machine's memory."""
    draft_model: str = ""
    """Optional smaller model with the same tokenizer, for speculative decoding."""
    context_window: int = 0
    """Tokens of context to plan memory for; 0: the model's own limit (capped at 8192)."""
    mode: str = "auto"
    """Routing mode: auto, local-only or cloud-preferred."""
    cloud_url: str = ""
    """The gateway's base URL, e.g. https://llm.example.org. Empty: no cloud."""
    cloud_ca_file: str = ""
    """PEM certificate of the CA that signed a self-hosted gateway's certificate, trusted
    besides the system's CAs. Empty: the system's CAs only."""
    cloud_allow_http: bool = False
    """Allow an http:// cloud_url on another machine (the key and prompts cross the network in
    the clear): only for a gateway reached through a tunnel or VPN you trust."""
    complexity_threshold: float = 0.6
    """Requests scoring above this go to the cloud (set by `tandem router calibrate`)."""
    privacy_terms: list[str] = field(default_factory=list)
    """Words or names that must never leave this device (matched case-insensitively)."""
    privacy_patterns: list[str] = field(default_factory=list)
    """Regular expressions that must never leave this device."""
    privacy_region: list[str] = field(default_factory=list)
    """Regions (ISO 3166 codes, several allowed) whose national phone formats the privacy
    scanner reads, e.g. ["GB", "DE"]. Empty: the locale's region (US when it names none)."""
    privacy_action: str = "keep-local"
    """When a conversation with private data would go to the cloud: keep-local (answer on
    this device) or redact (send it with placeholders; the real values are put back here)."""
    max_tokens: int = 512
    """The longest answer the chat asks for, in tokens."""
    mcp: dict[str, Any] = field(default_factory=dict)
    """MCP servers whose tools the chat offers the model: `[mcp.servers.NAME]` tables
    (tui/mcp/config.py; no `TANDEM_*` variable sets them)."""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}, not {self.mode!r}")
        if self.privacy_action not in PRIVACY_ACTIONS:
            raise ConfigError(
                f"privacy_action must be one of {', '.join(PRIVACY_ACTIONS)}, "
                f"not {self.privacy_action!r}"
            )
        bad = [r for r in self.privacy_region if not _REGION.match(r.strip())]
        if bad:
            raise ConfigError(
                f"privacy_region {bad[0]!r} is not a region code; use ISO 3166 codes such as "
                "US, GB, DE (several separated by commas)"
            )
        if not 0.0 <= self.complexity_threshold <= 1.0:
            raise ConfigError("complexity_threshold must be between 0 and 1")
        if self.context_window < 0:
            raise ConfigError("context_window must not be negative")
        if self.max_tokens < 1:
            raise ConfigError("max_tokens must be at least 1")
        try:
            parse_servers(self.mcp)
        except McpConfigError as exc:
            raise ConfigError(str(exc)) from exc

    @property
    def mcp_servers(self) -> tuple[McpServerSpec, ...]:
        """The declared MCP servers, checked."""
        return parse_servers(self.mcp)


def _coerce(name: str, value: str, kind: Any) -> Any:
    try:
        if kind in (int, "int"):
            return int(value)
        if kind in (float, "float"):
            return float(value)
        if kind in (bool, "bool"):
            if value.strip().lower() not in ("1", "true", "yes", "0", "false", "no", ""):
                raise ValueError("use true or false")
            return value.strip().lower() in ("1", "true", "yes")
        if kind in (list[str], "list[str]"):
            return [v.strip() for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise ConfigError(f"TANDEM_{name.upper()}={value!r}: {exc}") from exc
    return value


def _read_file(path: Path) -> dict[str, Any]:
    """The settings the file itself holds (no environment), checked for unknown names."""
    values: dict[str, Any] = {}
    if path.exists():
        try:
            values = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML ({exc}); fix or delete the file") from exc
    unknown = sorted(set(values) - {f.name for f in fields(Config)})
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}")
    return values


def load_config(path: Path | None = None) -> Config:
    """Read the config file (missing is fine: defaults), then apply TANDEM_* overrides."""
    values = _read_file(path or paths().config_file)
    for f in fields(Config):
        if f.name in NO_ENV:
            continue
        env = os.environ.get(f"TANDEM_{f.name.upper()}")
        if env is not None:
            values[f.name] = _coerce(f.name, env, f.type)
    return Config(**values)


def save_config(config: Config, path: Path | None = None) -> None:
    """Write every setting of `config` that differs from the defaults (replacing the file).

    The chat and the commands use `update_config` instead: a config loaded with `TANDEM_*`
    values or command-line overrides holds things the user did not ask to keep."""
    defaults = Config()
    _write(path or paths().config_file, {
        f.name: getattr(config, f.name)
        for f in fields(Config)
        if getattr(config, f.name) != getattr(defaults, f.name)
    })


def update_config(changes: dict[str, Any], path: Path | None = None) -> None:
    """Write `changes` (setting name → value) into the config file and keep everything else
    the file holds: never a value that came from the environment or the command line."""
    path = path or paths().config_file
    values = {**_read_file(path), **changes}
    checked = Config(**values)  # the file must load again: same checks as on reading
    defaults = Config()
    _write(path, {
        name: getattr(checked, name)
        for name in values
        if getattr(checked, name) != getattr(defaults, name)
    })


def _write(path: Path, data: dict[str, Any]) -> None:
    """Write the file whole or not at all: a crash mid-write must not leave half a config
    (write a temporary file beside it, then rename it over the old one)."""
    import tomli_w

    from tui.paths import private_dir

    private_dir(path.parent)  # 0700; mkstemp makes the file 0600 (it holds the privacy terms)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(tomli_w.dumps(data))
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def with_overrides(
    config: Config, *, mode: str | None = None, max_tokens: int | None = None
) -> Config:
    """The config with one session's command-line overrides, checked like the file's values."""
    changes: dict[str, Any] = {}
    if mode:
        changes["mode"] = mode
    if max_tokens is not None:
        changes["max_tokens"] = max_tokens
    return replace(config, **changes)
