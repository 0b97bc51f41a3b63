"""What must never leave the device: a scanner over the whole conversation that would be sent.

Kinds it finds: email addresses, phone numbers, payment card numbers (Luhn-checked), IBANs
(mod-97 checksum), US social security numbers, secrets (PEM private key blocks, `sk-…`,
`ghp_…` and other GitHub tokens, AWS `AKIA…` key ids, Slack `xox?-…` tokens), and the user's own
terms (case-insensitive, whole words) and regular expressions.

A finding names its kind and the message it is in (1-based, as a person counts), never the
matched text itself: the finding goes into the route record, which the chat shows and stores.

Speed matters (the router scans every request, whole conversation): every regex is compiled
once, and each family is skipped unless a cheap substring test (`"@" in text`, a digit, ...)
says it could match.
"""

from __future__ import annotations

import re
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from router.protocol import Message, TandemError

__all__ = [
    "KIND_LABELS",
    "Finding",
    "PrivacyConfigError",
    "PrivacyScanner",
    "iban_valid",
    "luhn_valid",
]

KIND_LABELS: dict[str, str] = {
    "email": "email address",
    "phone": "phone number",
    "card": "payment card number",
    "iban": "IBAN",
    "ssn": "US social security number",
    "private_key": "private key",
    "api_token": "API token",
    "term": "private term",
    "pattern": "private pattern",
}


class PrivacyConfigError(TandemError, ValueError):
    """A user privacy pattern is not a valid regular expression."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing that must stay on the device."""

    kind: str
    """One of KIND_LABELS' keys."""
    message: int
    """Which message holds it, counting from 1 (the continued assistant text counts last)."""

    @property
    def label(self) -> str:
        return KIND_LABELS.get(self.kind, self.kind)

    def describe(self) -> str:
        """E.g. "email address in message 3"."""
        return f"{self.label} in message {self.message}"


# --- checksums ------------------------------------------------------------------------------


def luhn_valid(digits: str) -> bool:
    """The Luhn check every payment card number passes (digits only)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20,
    "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18,
    "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IS": 26, "IT": 27, "JO": 30,
    "KW": 30, "KZ": 20, "LB": 28, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24,
    "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28,
    "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24, "SE": 24, "SI": 19, "SK": 24,
    "SM": 27, "TN": 24, "TR": 26, "UA": 29, "VG": 24, "XK": 20,
}  # fmt: skip


def iban_valid(iban: str) -> bool:
    """ISO 13616: known country length and the mod-97 check (spaces ignored)."""
    s = iban.replace(" ", "").upper()
    if _IBAN_LENGTHS.get(s[:2]) != len(s):
        return False
    rearranged = s[4:] + s[:4]
    try:
        number = int("".join(str(int(ch, 36)) for ch in rearranged))
    except ValueError:
        return False
    return number % 97 == 1


# --- patterns -------------------------------------------------------------------------------

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
# Digits must not continue a word, a number, a version or a decimal on either side.
_CARD = re.compile(r"(?<![\w.+-])(?:\d[ -]?){12,18}\d(?![\w.-]?\d)(?!\w)")
_SSN = re.compile(r"(?<![\w-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\w-])")
# Phone shapes: North American with separators, or international with a leading +.
_PHONE = re.compile(
    r"(?<![\w.+-])(?:"
    r"(?:\+?1[\s.-]?)?(?:\(\d{3}\)\s?|\d{3}[\s.-])\d{3}[\s.-]\d{4}"
    r"|\+\d{1,3}(?:[\s.-]?\(?\d{1,4}\)?){2,6}"
    r")(?![\w-]|\.\d)"
)
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?\b")
_PRIVATE_KEY = re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
_TOKENS = re.compile(
    r"(?<![\w-])(?:"
    r"sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"  # OpenAI / Anthropic style secret keys
    r"|gh[pousr]_[A-Za-z0-9]{36,}"  # GitHub tokens
    r"|github_pat_[A-Za-z0-9_]{22,}"
    r"|(?:AKIA|ASIA)[0-9A-Z]{16}"  # AWS access key ids
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack tokens
    r")(?![\w])"
)
# Where to look: the regexes above run only on small windows around these cheap hits, so a
# conversation costs a handful of C-speed passes however long it is.
_TOKEN_PREFIXES = (
    *("sk-", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_", "AKIA", "ASIA", "xox"),
)
# Nine or more digit-ish characters: the shortest thing of interest is an SSN (9 digits).
_NUMERIC = re.compile(r"\d[\d ().\-]{7,}\d")


def _digits(s: str) -> str:
    return "".join(ch for ch in s if ch.isdigit())


def _occurrences(text: str, needle: str) -> Iterator[int]:
    i = text.find(needle)
    while i >= 0:
        yield i
        i = text.find(needle, i + 1)


def _is_word(ch: str) -> bool:
    return ch.isalnum() or ch == "_"


class _Hits:
    """Kinds found per message, over the messages joined into one text (one pass per family
    instead of one per message): a position maps back to its message by bisection."""

    def __init__(self, texts: Sequence[str]) -> None:
        self.text = SEPARATOR.join(texts)
        self.starts: list[int] = []
        offset = 0
        for t in texts:
            self.starts.append(offset)
            offset += len(t) + len(SEPARATOR)
        self.found: set[tuple[int, str]] = set()

    def message(self, pos: int) -> int:
        return bisect_right(self.starts, pos)  # 1-based

    def has(self, pos: int, kind: str) -> bool:
        return (self.message(pos), kind) in self.found

    def add(self, pos: int, kind: str) -> None:
        self.found.add((self.message(pos), kind))


# Between messages: no pattern here matches a NUL, so nothing spans two messages.
SEPARATOR = "\x00"


def _find_emails(h: _Hits) -> None:
    text = h.text
    for i in _occurrences(text, "@"):
        if not h.has(i, "email"):
            m = _EMAIL.search(text, max(0, i - 64), i + 256)
            if m is not None:
                h.add(m.start(), "email")


def _find_keys(h: _Hits) -> None:
    if "PRIVATE KEY" in h.text:
        for m in _PRIVATE_KEY.finditer(h.text):
            h.add(m.start(), "private_key")


def _find_tokens(h: _Hits) -> None:
    text = h.text
    for prefix in _TOKEN_PREFIXES:
        for i in _occurrences(text, prefix):
            if not h.has(i, "api_token") and _TOKENS.match(text, i):
                h.add(i, "api_token")


def _find_numbers(h: _Hits) -> None:
    text = h.text
    for m in _NUMERIC.finditer(text):
        pos = m.start()
        # A window a little wider than the run, so the patterns' boundary checks see its
        # neighbours (a "+" or "(" before a phone number, a letter that makes it an identifier).
        start, end = max(0, pos - 4), m.end() + 2
        if not h.has(pos, "ssn") and _SSN.search(text, start, end):
            h.add(pos, "ssn")
        if not h.has(pos, "card") and any(
            luhn_valid(_digits(c.group())) for c in _CARD.finditer(text, start, end)
        ):
            h.add(pos, "card")
        if not h.has(pos, "phone") and any(
            10 <= len(_digits(p.group())) <= 15 for p in _PHONE.finditer(text, start, end)
        ):
            h.add(pos, "phone")
        # IBANs: two letters, two check digits and a mostly numeric account number.
        if not h.has(pos, "iban"):
            for i in _IBAN.finditer(text, max(0, pos - 34), m.end() + 34):
                if iban_valid(i.group()):
                    h.add(i.start(), "iban")


class PrivacyScanner:
    """Finds what must stay on the device in a conversation. Construct once (compiles the
    user's terms and patterns), call `scan` per request."""

    def __init__(self, terms: Iterable[str] = (), patterns: Iterable[str] = ()) -> None:
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

    def _find_terms(self, h: _Hits) -> None:
        low = h.text.lower()
        if len(low) != len(h.text):  # a few characters lower-case to two: keep positions true
            low = "".join(ch.lower()[0] for ch in h.text)
        for term in self._terms:
            for i in _occurrences(low, term):
                before = low[i - 1] if i > 0 else " "
                after = low[i + len(term)] if i + len(term) < len(low) else " "
                if not (_is_word(before) or _is_word(after)):
                    h.add(i, "term")

    def scan_texts(self, texts: Sequence[str]) -> list[Finding]:
        """Findings in these texts, in message order (message numbers count from 1), each
        kind once per message."""
        h = _Hits(texts)
        _find_emails(h)
        _find_keys(h)
        _find_tokens(h)
        _find_numbers(h)
        if self._terms:
            self._find_terms(h)
        for pattern in self._patterns:
            for m in pattern.finditer(h.text):
                h.add(m.start(), "pattern")
        return [Finding(kind, message) for message, kind in sorted(h.found, key=_order)]

    def scan(self, messages: Sequence[Message], continue_from: str = "") -> list[Finding]:
        """Findings in every message that would be sent (and in the text being continued)."""
        texts = [m.content for m in messages]
        if continue_from:
            texts.append(continue_from)
        return self.scan_texts(texts)


_KIND_ORDER = {kind: i for i, kind in enumerate(KIND_LABELS)}


def _order(item: tuple[int, str]) -> tuple[int, int]:
    return item[0], _KIND_ORDER[item[1]]
