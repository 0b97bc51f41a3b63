"""The `tandem` command: a dispatcher that imports each subcommand only when it runs.

A GPU server that only runs `tandem cloud serve` has neither Textual nor MLX installed, and
`tandem --help` must work with the base install alone, so this module imports nothing but the
standard library. Each subcommand is a module with `main(argv: list[str]) -> int` that builds
its own argparse parser (so `tandem CMD --help` is complete).
"""

from __future__ import annotations

import importlib
import sys
from dataclasses import dataclass

__all__ = ["COMMANDS", "Command", "keep_torch_out", "main"]


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    module: str
    """Imported only when this command runs; must define main(argv) -> int."""
    summary: str
    extra: str
    """The install extra that brings this command's dependencies."""


COMMANDS: tuple[Command, ...] = (
    Command("chat", "tui.commands.chat", "chat in the terminal (the default command)", "desktop"),
    Command("cloud", "tui.commands.cloud", "run the self-hosted cloud service", "gateway"),
    Command("finetune", "tui.commands.finetune", "train and evaluate LoRA adapters", "desktop"),
    Command("adapters", "tui.commands.adapters", "list, export and push adapters", "desktop"),
    Command("serve", "tui.commands.serve", "OpenAI-compatible endpoint on 127.0.0.1", "desktop"),
    Command("router", "tui.commands.router", "calibrate and explain routing decisions", "desktop"),
    Command("privacy", "tui.commands.privacy", "check the privacy scanner on your data", "desktop"),
    Command("models", "tui.commands.models", "pull, list, pick and quantize models", "desktop"),
    Command("mcp", "tui.commands.mcp", "the chat's tools: list MCP servers and their tools",
            "desktop"),
)

# Third-party packages whose absence means "install the extra", not "tandem has a bug".
OPTIONAL_PACKAGES = frozenset(
    {
        "mlx",
        "mlx_lm",
        "textual",
        "httpx",
        "keyring",
        "tomli_w",
        "vllm",
        "torch",
        "starlette",
        "uvicorn",
        "multipart",
        "phonenumbers",
        "stdnum",
        "mcp",
    }
)

USAGE = """\
usage: tandem [COMMAND] [ARGS...]

Chat with a language model on this machine; a self-hosted cloud takes over when the device
should not or cannot answer. With no command, `tandem` starts the chat.

commands:
{commands}

Run `tandem COMMAND --help` for a command's options.
"""


def _usage() -> str:
    width = max(len(c.name) for c in COMMANDS)
    lines = "\n".join(f"  {c.name.ljust(width)}  {c.summary}" for c in COMMANDS)
    return USAGE.format(commands=lines)


def _missing_extra(command: Command, exc: ModuleNotFoundError) -> str | None:
    top = (exc.name or "").split(".")[0]
    if top not in OPTIONAL_PACKAGES:
        return None
    return (
        f"tandem {command.name} needs the '{command.extra}' extra ({top} is not installed): "
        f"pip install 'tandem[{command.extra}]'"
    )


def keep_torch_out() -> None:
    """Make `import torch` fail in this process, unless torch is already loaded.

    No command runs torch in its own process (vLLM is a child process), but transformers,
    which mlx-lm uses for tokenizers, imports torch whenever it is installed (the test and demo
    environments have it): that costs seconds at start-up, and torch's triton prints a long
    "nanobind: leaked ..." report into the terminal at exit. A `None` entry in sys.modules is
    Python's documented way to make an import fail; transformers then sees no torch.
    """
    sys.modules.setdefault("torch", None)  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in ("-h", "--help", "help"):
        print(_usage(), end="")
        return 0
    if args and args[0] == "--version":
        from importlib.metadata import version

        print(f"tandem {version('tandem')}")
        return 0
    name = args[0] if args and not args[0].startswith("-") else "chat"
    rest = args[1:] if args and args[0] == name else args
    command = next((c for c in COMMANDS if c.name == name), None)
    if command is None:
        print(
            f"tandem: unknown command {name!r}. Run `tandem --help` for the list.", file=sys.stderr
        )
        return 2
    keep_torch_out()
    # Commands import their heavy dependencies at the top or inside main(): catch both.
    try:
        module = importlib.import_module(command.module)
        return int(module.main(rest) or 0)
    except ModuleNotFoundError as exc:
        message = _missing_extra(command, exc)
        if message is None:
            raise
        print(message, file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
