"""What must never leave the device: a scanner over the whole request that would be sent.

Families it finds (KIND_LABELS): e-mail addresses, phone numbers (phonenumbers, national
formats read in the user's regions), payment cards (issuer ranges + Luhn), IBANs and national
ids (python-stdnum), secrets (provider tokens, JWTs, PEM keys, passwords in URLs, assignments
and sentences), street addresses, dates of birth, health and other special-category data, and
the user's own terms (whole words, any case) and regular expressions.

Every message is normalised first (router.privacy_text: NFKC, Unicode spaces and dashes,
zero-width characters) and positions are mapped back. A finding names its kind and the message
it is in (1-based, as a person counts), never the matched text: the finding goes into the route
record, which the chat shows and stores. `spans()` gives the positions too, for redaction
(router.redaction), still without the text.

Speed: the router scans every request. Each family is gated on cheap substring tests and calls
its regexes and libraries only on candidate spans; a message's result is cached by its text,
so the earlier turns of a conversation (and the cloud client's second look at the same request)
cost a dictionary lookup.

The modules: privacy_text (normalising, positions), privacy_numbers, privacy_secrets,
privacy_prose (detectors), privacy_region (the user's regions), redaction (placeholders out,
values back in).
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from router import privacy_numbers, privacy_prose, privacy_secrets
from router.privacy_numbers import find_numbers
from router.privacy_prose import find_prose
from router.privacy_region import DEFAULT_REGIONS, check_regions
from router.privacy_secrets import find_secrets
from router.privacy_text import Hit, normalize
from router.protocol import BackendError, ChatRequest, Message, TandemError

__all__ = [
    "KINDS",
    "KIND_LABELS",
    "Finding",
    "PrivacyConfigError",
    "PrivacyGuarded",
    "PrivacyRefused",
    "PrivacyScanner",
    "Span",
    "clearance",
    "iban_valid",
    "luhn_valid",
    "message_text",
]

KIND_LABELS: dict[str, str] = {
    "email": "email address",
    "phone": "phone number",
    "card": "payment card number",
    "iban": "IBAN",
    "national_id": "national id number",
    "private_key": "private key",
    "api_token": "API token",
    "password": "password",
    "credential_url": "password in a URL",
    "address": "street address",
    "birth_date": "date of birth",
    "sensitive": "health or other sensitive personal data",
    "term": "private term",
    "pattern": "private pattern",
}
KINDS = tuple(KIND_LABELS)


class PrivacyConfigError(TandemError, ValueError):
    """A user privacy pattern is not a valid regular expression, or a region is unknown."""


class PrivacyRefused(BackendError):
    """The cloud client's last check found private data the router did not clear in the
    exact request it was about to send; nothing was sent. The router answers on the device."""

    def __init__(self, findings: Sequence[Finding], *, backend: str = "") -> None:
        shown = ", ".join(f.describe() for f in findings[:3])
        more = f" and {len(findings) - 3} more" if len(findings) > 3 else ""
        what = f"{shown}{more} must stay on this device" if findings else "the privacy check failed"
        super().__init__(f"not sent to the cloud: {what}", backend=backend)
        self.findings = tuple(findings)


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing that must stay on the device."""

    kind: str
    """One of KIND_LABELS' keys."""
    message: int
    """Which message holds it, counting from 1 (the continued assistant text counts last)."""
    part: str = ""
    """"" for a message; "stop strings" or "adapter name" for the other fields of a request."""

    @property
    def label(self) -> str:
        return KIND_LABELS.get(self.kind, self.kind)

    def describe(self) -> str:
        """E.g. "email address in message 3"."""
        where = f"the {self.part}" if self.part else f"message {self.message}"
        return f"{self.label} in {where}"


@dataclass(frozen=True, slots=True)
class Span:
    """Where a finding is: message index (0-based) and the characters in the original text.
    Holds positions only, so it can be logged or stored without the private text."""

    kind: str
    index: int
    start: int
    end: int
    detail: str = field(default="", compare=False)


def clearance(findings: Iterable[Finding]) -> frozenset[tuple[str, int, str]]:
    """What `ChatRequest.privacy_cleared` holds for these findings."""
    return frozenset((f.kind, f.message, f.part) for f in findings)


def message_text(m: Message) -> str:
    """Every text of a message that goes over the wire: its content, and (where the contract
    has them) its reasoning and its tool calls' names and arguments."""
    parts = [m.content]
    reasoning = getattr(m, "reasoning", "")
    if reasoning:
        parts.append(reasoning)
    for call in getattr(m, "tool_calls", ()):
        parts += [call.name, call.arguments]
    return "\n".join(parts) if len(parts) > 1 else m.content


# --- checksums (kept for callers; the libraries do the work) ----------------------------------


def luhn_valid(digits: str) -> bool:
    """The Luhn check every payment card number passes (digits only)."""
    from stdnum import luhn

    return luhn.is_valid(digits)


def iban_valid(iban: str) -> bool:
    """ISO 13616 (python-stdnum): known country, length and the mod-97 check."""
    from stdnum import iban as std_iban

    return std_iban.is_valid(iban)


# --- the scanner ------------------------------------------------------------------------------

_GATES = privacy_numbers.GATE_WORDS | privacy_prose.GATE_WORDS | privacy_secrets.GATE_WORDS
_CACHE_SIZE = 2048
_CACHE_CHARS = 4_000_000  # and no more text than this kept as keys (long pastes)
# Between messages scanned together: a line break stops every value pattern, and no pattern
# matches a NUL.
_SEPARATOR = "\n\x00\n"
# Kinds a longer finding of another kind already covers (a phone number inside an address).
_PRIORITY = {kind: i for i, kind in enumerate(KINDS)}


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


class PrivacyScanner:
    """Finds what must stay on the device in a conversation. Construct once (compiles the
    user's terms and patterns), call `scan` per request.

    `regions`: ISO 3166 codes in which phone numbers written without a country code are read
    (router.privacy_region picks them from the locale by default)."""

    def __init__(
        self,
        terms: Iterable[str] = (),
        patterns: Iterable[str] = (),
        regions: Iterable[str] | None = None,
    ) -> None:
        # Lower-cased once; matched as whole words ("Ann" must not match "annual") by a plain
        # substring search plus a look at the neighbours, much faster than one big regex.
        self._terms = sorted({t.strip().lower() for t in terms if t.strip()})
        self._patterns: list[re.Pattern[str]] = []
        for pattern in patterns:
            try:
                self._patterns.append(re.compile(pattern))
            except re.error as exc:
                raise PrivacyConfigError(
                    f"privacy pattern {pattern!r} is not a valid regular expression ({exc}); "
                    "fix it in the config (privacy_patterns)"
                ) from exc
        try:
            self.regions = check_regions(DEFAULT_REGIONS if regions is None else regions)
        except ValueError as exc:
            raise PrivacyConfigError(str(exc)) from exc
        self._cache: OrderedDict[str, tuple[Hit, ...]] = OrderedDict()
        self._cached_chars = 0

    # --- one text ---------------------------------------------------------------------------

    def _hits(self, texts: Sequence[str]) -> list[tuple[Hit, ...]]:
        """Every finding in each text (positions in that text). Results are cached by text;
        the texts not in the cache are scanned joined into one, so that a long conversation
        costs each detector one pass instead of one per message."""
        cache = self._cache
        results: list[tuple[Hit, ...] | None] = []
        for text in texts:
            cached = cache.get(text)
            if cached is not None:
                cache.move_to_end(text)
            results.append(cached if text else ())
        missing = [i for i, r in enumerate(results) if r is None]
        if missing:
            starts: list[int] = []
            offset = 0
            for i in missing:
                starts.append(offset)
                offset += len(texts[i]) + len(_SEPARATOR)
            per: list[list[Hit]] = [[] for _ in missing]
            for h in self._scan(_SEPARATOR.join(texts[i] for i in missing)):
                k = bisect_right(starts, h.start) - 1
                base = starts[k]
                if h.end <= base + len(texts[missing[k]]):  # nothing spans two messages
                    per[k].append(Hit(h.kind, h.start - base, h.end - base, h.detail))
            for k, i in enumerate(missing):
                if texts[i] not in cache:
                    self._cached_chars += len(texts[i])
                results[i] = cache[texts[i]] = tuple(per[k])
            while len(cache) > _CACHE_SIZE or self._cached_chars > _CACHE_CHARS:
                old, _ = cache.popitem(last=False)
                self._cached_chars -= len(old)
        return [r or () for r in results]

    def _scan(self, text: str) -> tuple[Hit, ...]:
        if not text:
            return ()
        t = normalize(text)
        t.gates = _GATES
        found: list[Hit] = [
            *find_secrets(t),
            *find_numbers(t, self.regions),
            *find_prose(t),
        ]
        if self._terms:
            found += self._find_terms(t.low)
        for pattern in self._patterns:
            # User patterns run on the original text: that is what the user wrote them for.
            found += [
                Hit("pattern", m.start(), m.end())
                for m in pattern.finditer(text)
                if m.end() > m.start()
            ]
        out: list[Hit] = []
        for h in _resolve(found):
            if h.kind == "pattern":
                out.append(h)
                continue
            start, end = t.original(h.start, h.end)
            out.append(Hit(h.kind, start, end, h.detail))
        return tuple(out)

    def _find_terms(self, low: str) -> list[Hit]:
        hits: list[Hit] = []
        for term in self._terms:
            i = low.find(term)
            while i >= 0:
                before = low[i - 1] if i > 0 else " "
                after = low[i + len(term)] if i + len(term) < len(low) else " "
                if not (_is_word(before) or _is_word(after)):
                    hits.append(Hit("term", i, i + len(term)))
                i = low.find(term, i + 1)
        return hits

    # --- a conversation -----------------------------------------------------------------------

    def spans(self, texts: Sequence[str]) -> list[Span]:
        """Every finding's place in these texts, in order."""
        return [
            Span(h.kind, i, h.start, h.end, h.detail)
            for i, hits in enumerate(self._hits(texts))
            for h in hits
        ]

    def scan_texts(self, texts: Sequence[str]) -> list[Finding]:
        """Findings in these texts, in message order (message numbers count from 1), each
        kind once per message."""
        out: list[Finding] = []
        for i, hits in enumerate(self._hits(texts)):
            if hits:
                kinds = {h.kind for h in hits}
                out += [Finding(k, i + 1) for k in sorted(kinds, key=_PRIORITY.__getitem__)]
        return out

    def scan(self, messages: Sequence[Message], continue_from: str = "") -> list[Finding]:
        """Findings in every message that would be sent (and in the text being continued)."""
        texts = [message_text(m) for m in messages]
        if continue_from:
            texts.append(continue_from)
        return self.scan_texts(texts)

    def scan_payload(self, body: Mapping[str, Any]) -> list[Finding]:
        """Findings in a chat-completions body exactly as it goes over the wire: every string
        in each message (content, reasoning, tool calls), then the stop strings, the model
        (adapter) name and every other field. Message numbers match `scan_request`'s: the
        continued text is the body's last message."""
        messages = body.get("messages") or []
        findings = self.scan_texts(["\n".join(_strings(m)) for m in messages])
        n = len(messages)
        parts = [("stop strings", body.get("stop")), ("adapter name", body.get("model"))]
        rest = {k: v for k, v in body.items() if k not in ("messages", "stop", "model")}
        parts.append(("request fields", rest))
        for part, value in parts:
            for f in self.scan_texts(["\n".join(_strings(value))]):
                finding = Finding(f.kind, n + 1, part)
                if finding not in findings:
                    findings.append(finding)
        return findings

    def scan_request(self, request: ChatRequest) -> list[Finding]:
        """Findings in everything of `request` that goes over the wire: every message, the text
        being continued, the stop strings and the adapter name (the cloud client's check)."""
        findings = self.scan(request.messages, request.continue_from)
        reasoning = getattr(request, "continue_reasoning", "")
        if reasoning:  # the continued turn's reasoning travels in the same (last) message
            n_last = len(request.messages) + 1
            for f in self.scan_texts([reasoning]):
                if Finding(f.kind, n_last) not in findings:
                    findings.append(Finding(f.kind, n_last))
        n = len(request.messages) + (1 if request.continue_from or reasoning else 0)
        extra = [("stop strings", s) for s in request.sampling.stop]
        if request.adapter:
            extra.append(("adapter name", request.adapter))
        for part, text in extra:
            for f in self.scan_texts([text]):
                finding = Finding(f.kind, n + 1, part)
                if finding not in findings:
                    findings.append(finding)
        return findings


def _strings(value: object) -> list[str]:
    """Every string inside a JSON value (keys of objects too: a tool's parameter names)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, Mapping):
        out: list[str] = []
        for k, v in value.items():
            out.append(str(k))
            out += _strings(v)
        return out
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


@runtime_checkable
class PrivacyGuarded(Protocol):
    """A backend that checks what it sends (the cloud client): the hybrid backend hands it the
    router's scanner, so both look for the same terms and patterns."""

    scanner: PrivacyScanner


def _resolve(hits: list[Hit]) -> list[Hit]:
    """Overlapping findings: keep the longer one (an address holding a number is an address),
    on a tie the kind listed first."""
    if len(hits) < 2:
        return hits
    ordered = sorted(hits, key=lambda h: (h.start, -(h.end - h.start), _PRIORITY[h.kind]))
    out: list[Hit] = []
    for h in ordered:
        if out and h.start < out[-1].end:
            last = out[-1]
            if h.end - h.start > last.end - last.start:
                out[-1] = h
            continue
        out.append(h)
    return out
