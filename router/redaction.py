"""Redact instead of refusing (`privacy_action = "redact"`): the cloud gets the conversation
with each private value replaced by a typed placeholder, the same one wherever the value occurs
(`[EMAIL_1]`, `[CARD_1]`), and the device puts the real values back into the streamed answer
before it is shown or stored. The cloud can write the dispute letter without ever seeing the
card number.

A placeholder the cloud changed (`[Email_1]`, `[CARD 1]`, `[EMAIL_7]` that was never sent) is
left visible and marked `⟦…⟧`, so nobody mistakes it for the real value.

Pure: the values live only in the `Redaction` object, on the device, for one answer.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

from router.privacy import KIND_LABELS, PrivacyScanner
from router.protocol import ChatRequest, Message

__all__ = ["PLACEHOLDER_NAMES", "Redaction", "Restorer", "redact"]

PLACEHOLDER_NAMES: dict[str, str] = {
    "email": "EMAIL",
    "phone": "PHONE",
    "card": "CARD",
    "iban": "IBAN",
    "national_id": "ID_NUMBER",
    "private_key": "PRIVATE_KEY",
    "api_token": "TOKEN",
    "password": "PASSWORD",
    "credential_url": "PASSWORD",
    "address": "ADDRESS",
    "birth_date": "BIRTH_DATE",
    "sensitive": "HEALTH_INFO",
    "term": "PRIVATE_TERM",
    "pattern": "PRIVATE",
}
_EXACT = re.compile(r"\[([A-Z]+(?:_[A-Z]+)*)_(\d+)\]")
# What a model makes of a placeholder when it rewrites it: case, a space or dash for "_".
_NEAR = re.compile(r"\[([A-Za-z]+(?:[_ -][A-Za-z]+)*)[_ -]?(\d+)\]")
_HOLD = 48  # an unclosed "[" this close to the end may be the start of a placeholder


@dataclass(slots=True)
class Redaction:
    """One request's placeholders. `request` is what may be sent; `values` maps each
    placeholder to the real text (kept on the device)."""

    request: ChatRequest
    values: dict[str, str] = field(default_factory=dict)
    kinds: Counter[str] = field(default_factory=Counter)
    mangled: int = 0
    """Placeholders in the answer that the cloud changed (left visible, marked)."""

    @property
    def count(self) -> int:
        return len(self.values)

    def summary(self) -> str:
        """E.g. "2 items redacted: email address, payment card number"."""
        if not self.values:
            return "nothing to redact"
        labels = ", ".join(KIND_LABELS.get(k, k) for k in self.kinds)
        n = self.count
        return f"{n} item{'s' if n != 1 else ''} redacted: {labels}"

    def restorer(self) -> Restorer:
        return Restorer(self.values)


class _Mapper:
    """Values → placeholders, consistent across the whole request."""

    def __init__(self, scanner: PrivacyScanner, existing: str = "") -> None:
        self.scanner = scanner
        self.existing = existing
        """The request's own text: a placeholder it already holds is not handed out again."""
        self.by_value: dict[tuple[str, str], str] = {}
        self.values: dict[str, str] = {}
        self.numbers: Counter[str] = Counter()
        self.kinds: Counter[str] = Counter()

    def placeholder(self, kind: str, value: str) -> str:
        name = PLACEHOLDER_NAMES.get(kind, "PRIVATE")
        key = (name, " ".join(value.split()))
        found = self.by_value.get(key)
        if found is None:
            self.numbers[name] += 1
            while f"[{name}_{self.numbers[name]}]" in self.existing:
                self.numbers[name] += 1
            found = f"[{name}_{self.numbers[name]}]"
            self.by_value[key] = found
            self.values[found] = value
            self.kinds[kind] += 1
        return found

    def texts(self, texts: list[str]) -> list[str]:
        spans = self.scanner.spans(texts)
        out = list(texts)
        for i in range(len(texts)):
            mine = sorted((s for s in spans if s.index == i), key=lambda s: s.start)
            if not mine:
                continue
            text, parts, at = texts[i], [], 0
            for s in mine:
                if s.start < at:
                    continue
                parts.append(text[at : s.start])
                parts.append(self.placeholder(s.kind, text[s.start : s.end]))
                at = s.end
            parts.append(text[at:])
            out[i] = "".join(parts)
        return out

    def text(self, text: str) -> str:
        if not text:
            return text
        # A value already seen elsewhere (a tool call repeating an address) gets its
        # placeholder even where the scanner would not find it on its own.
        for (_, value), ph in sorted(self.by_value.items(), key=lambda kv: -len(kv[0][1])):
            text = text.replace(value, ph)
        return self.texts([text])[0]


def _message(m: Message, mapper: _Mapper, content: str) -> Message:
    changes: dict[str, Any] = {"content": content}
    reasoning = getattr(m, "reasoning", "")
    if reasoning:
        changes["reasoning"] = mapper.text(reasoning)
    calls = getattr(m, "tool_calls", ())
    if calls:
        changes["tool_calls"] = tuple(replace(c, arguments=mapper.text(c.arguments)) for c in calls)
    return replace(m, **changes)


def redact(request: ChatRequest, scanner: PrivacyScanner) -> Redaction:
    """The request with every finding replaced by its placeholder: the messages, the text
    being continued (and its reasoning), tool calls and the stop strings."""
    texts = [m.content for m in request.messages] + [request.continue_from]
    mapper = _Mapper(scanner, "\n".join(texts) if any("[" in t for t in texts) else "")
    redacted = mapper.texts(texts)
    messages = tuple(_message(m, mapper, redacted[i]) for i, m in enumerate(request.messages))
    changes: dict[str, Any] = {"messages": messages, "continue_from": redacted[-1]}
    reasoning = getattr(request, "continue_reasoning", "")
    if reasoning:
        changes["continue_reasoning"] = mapper.text(reasoning)
    if request.sampling.stop:
        stops = tuple(mapper.text(s) for s in request.sampling.stop)
        changes["sampling"] = replace(request.sampling, stop=stops)
    return Redaction(replace(request, **changes), mapper.values, mapper.kinds)


class Restorer:
    """Puts the real values back into a streamed answer. Feed it each delta; it returns the
    text that is safe to show now (holding back what may be the start of a placeholder),
    and `flush()` gives the rest at the end."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.pending = ""
        self.restored = 0
        self.mangled = 0

    def feed(self, text: str) -> str:
        buf = self.pending + text
        cut = buf.rfind("[")
        if cut >= 0 and "]" not in buf[cut:] and len(buf) - cut <= _HOLD:
            self.pending, buf = buf[cut:], buf[:cut]
        else:
            self.pending = ""
        return self._restore(buf)

    def flush(self) -> str:
        buf, self.pending = self.pending, ""
        return self._restore(buf)

    def _restore(self, text: str) -> str:
        if "[" not in text:
            return text

        def one(m: re.Match[str]) -> str:
            whole = m.group(0)
            exact = self.values.get(whole)
            if exact is not None:
                self.restored += 1
                return exact
            if _EXACT.fullmatch(whole) and not self._known_name(m.group(1)):
                return whole  # not a placeholder of ours: someone's "[NOTE_1]"
            self.mangled += 1
            return f"⟦{whole}⟧"

        return _NEAR.sub(one, text)

    def _known_name(self, name: str) -> bool:
        return name in set(PLACEHOLDER_NAMES.values())
