"""`tandem chat`: the terminal chat app (the default command)."""

from __future__ import annotations

import argparse
import os
import sys

from tui.config import MODES, ConfigError, load_config, with_overrides
from tui.paths import paths

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem chat",
        description=(
            "Chat in the terminal with a model on this machine; a self-hosted cloud takes over "
            "when the router says so. Enter sends, Alt+Enter or Ctrl+J adds a line, Esc cancels "
            "an answer, Ctrl+P opens the command palette, Ctrl+Q quits. Conversations are "
            "saved in the data directory ($TANDEM_HOME/data with TANDEM_HOME set)."
        ),
    )
    parser.add_argument(
        "--model",
        default=os.environ.get("TANDEM_MODEL"),
        help="local model folder (Hugging Face layout), hub id or pulled name; "
        "default: $TANDEM_MODEL, then `model` in the config file, then the default for this "
        "machine's memory (`tandem models default`; pulled on the first start)",
    )
    parser.add_argument(
        "--draft-model",
        default=None,
        help="smaller model with the same tokenizer for speculative decoding; "
        "default: `draft_model` in the config file",
    )
    parser.add_argument(
        "--mode",
        choices=MODES,
        default=None,
        help="routing mode for this session (default: `mode` in the config file, or auto)",
    )
    parser.add_argument(
        "--max-tokens", type=int, default=None, help="longest answer, in tokens (default 512)"
    )
    parser.add_argument(
        "--db",
        default=None,
        help="conversation database file (default: conversations.db in the data directory)",
    )
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = with_overrides(load_config(), mode=args.mode, max_tokens=args.max_tokens)
    except ConfigError as exc:
        print(f"tandem chat: {exc}", file=sys.stderr)
        return 2
    # Textual is imported only now: `tandem --help` must work without it.
    import asyncio
    import sqlite3

    from tui.app import TandemApp
    from tui.store import Store
    from tui.threads import DaemonExecutor

    db = args.db or paths().database
    try:
        store = Store.open(db)
    except (sqlite3.Error, OSError) as exc:
        print(f"tandem chat: cannot open the conversation store {db}: {exc}", file=sys.stderr)
        return 1
    app = TandemApp(store=store, config=config, model=args.model, draft_model=args.draft_model)

    async def run() -> None:
        # Quitting while the model still loads must not wait for the loading threads.
        asyncio.get_running_loop().set_default_executor(DaemonExecutor())
        await app.run_async()

    try:
        asyncio.run(run())
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
