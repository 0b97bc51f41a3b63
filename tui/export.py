"""Export a conversation as Markdown (to read) and JSON (to process), with each answer's route."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

from tui.store import Conversation, Store, StoredMessage

__all__ = ["export_conversation", "to_json", "to_markdown"]

STATUS_NOTE = {
    "cancelled": "cancelled — partial answer",
    "incomplete": "incomplete — the app stopped while this answer streamed",
    "error": "failed",
    "streaming": "still streaming",
}


def _badge(msg: StoredMessage) -> str:
    r = msg.route
    if r is None:
        return ""
    parts = [r.backend + (f" · {r.adapter}" if r.adapter else ""), r.model]
    if r.reason:
        parts.append(r.reason)
    parts.append(f"{r.prompt_tokens}→{r.completion_tokens} tokens")
    if r.ttft_s is not None:
        parts.append(f"ttft {r.ttft_s * 1000:.0f} ms")
    if r.decode_tokens_per_s is not None:
        parts.append(f"{r.decode_tokens_per_s:.1f} tok/s")
    return " · ".join(parts)


def to_markdown(conv: Conversation, messages: list[StoredMessage]) -> str:
    """The conversation as a Markdown document."""
    lines = [f"# {conv.title}", ""]
    if conv.system_prompt:
        lines += ["> **System prompt:** " + conv.system_prompt.replace("\n", "\n> "), ""]
    for msg in messages:
        lines += [f"## {msg.role.capitalize()}", "", msg.content.rstrip(), ""]
        if msg.status in STATUS_NOTE:
            lines += [f"*({STATUS_NOTE[msg.status]}{': ' + msg.error if msg.error else ''})*", ""]
        badge = _badge(msg)
        if badge:
            lines += [f"<sub>{badge}</sub>", ""]
        if msg.route and msg.route.failover:
            lines += [f"*{msg.route.failover}*", ""]
    return "\n".join(lines)


def to_json(conv: Conversation, messages: list[StoredMessage]) -> str:
    """The conversation with every message, status and route record, as JSON."""
    return json.dumps(
        {"conversation": asdict(conv), "messages": [asdict(m) for m in messages]},
        indent=2,
        ensure_ascii=False,
    )


def _slug(title: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", title).strip("-").lower()
    return slug[:48] or "conversation"


def export_conversation(store: Store, conversation_id: str, folder: Path) -> tuple[Path, Path]:
    """Write `<title>.md` and `<title>.json` into `folder`; returns both paths."""
    conv = store.conversation(conversation_id)
    if conv is None:
        raise KeyError(conversation_id)
    messages = store.messages(conversation_id)
    from tui.paths import private_dir, write_private

    private_dir(folder)  # a folder tandem makes is 0700; an existing one keeps its mode
    stem = f"{_slug(conv.title)}-{conv.id[:8]}"
    md, js = folder / f"{stem}.md", folder / f"{stem}.json"
    write_private(md, to_markdown(conv, messages))  # 0600: a conversation is private
    write_private(js, to_json(conv, messages))
    return md, js
