"""`tandem chat`: talk to the model.

Until the Textual app lands this is a plain line-based chat against mlx-lm, the smallest thing
that shows the local engine answering.
"""

from __future__ import annotations

import argparse
import os
import sys


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tandem chat",
        description="Chat with a model on this machine, one line per message. "
        "Type /quit (or press Ctrl-D) to leave.",
    )
    parser.add_argument(
        "--model",
        default=os.environ.get("TANDEM_MODEL"),
        help="a local model folder (Hugging Face layout) or a hub id; default: $TANDEM_MODEL",
    )
    parser.add_argument("--max-tokens", type=int, default=256, help="longest answer, in tokens")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if not args.model:
        print(
            "tandem chat: no model given. Pass --model PATH or set TANDEM_MODEL.", file=sys.stderr
        )
        return 2
    from mlx_lm import load, stream_generate

    try:
        loaded = load(args.model)
        model, tokenizer = loaded[0], loaded[1]
    except (FileNotFoundError, OSError, ValueError) as exc:
        print(f"tandem chat: cannot load {args.model}: {exc}", file=sys.stderr)
        return 1
    history: list[dict[str, str]] = []
    print(f"model: {args.model}\nType a message and press Enter; /quit to leave.")
    while True:
        try:
            line = input("you> ").strip()
        except EOFError:
            print()
            return 0
        if line in ("/quit", "/exit"):
            return 0
        if not line:
            continue
        history.append({"role": "user", "content": line})
        prompt = tokenizer.apply_chat_template(history, add_generation_prompt=True, tokenize=False)
        answer: list[str] = []
        print("tandem> ", end="", flush=True)
        for response in stream_generate(model, tokenizer, prompt, max_tokens=args.max_tokens):
            print(response.text, end="", flush=True)
            answer.append(response.text)
        print()
        history.append({"role": "assistant", "content": "".join(answer)})
