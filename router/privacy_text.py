"""Text as the privacy scanner reads it: NFKC (on each character together with the combining
marks after it, so a decomposed "e" + U+0301 reads as "é"), every Unicode space and dash as its
ASCII form, other-script digits as ASCII digits, zero-width characters and soft hyphens dropped
— with each position mapped back to the original, so a finding (and a redaction) still points at the
characters the user wrote.

Also the two cheap views the detectors gate on: `shape` (digits → "0", A–Z → "A", a–z → "a",
all else kept) turns "a digit run", "two capitals then two digits" into plain substring
searches, which run at C speed where a character-class regex would step through every
character in Python's regex engine.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from bisect import bisect_right
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = ["Hit", "ScanText", "near", "normalize"]

_DASHES = frozenset("\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u2043\ufe58\ufe63\uff0d")
_DROPPED = frozenset("\u200b\u200c\u200d\u2060\ufeff\u00ad\u180e")
_NON_ASCII = re.compile(r"[^\x00-\x7f]+")
_SHAPE_MAP = {
    **{c: "0" for c in "0123456789"},
    **{c: "A" for c in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"},
    **{c: "a" for c in "abcdefghijklmnopqrstuvwxyz"},
}
_SHAPE = str.maketrans(_SHAPE_MAP)
# bytes.translate runs at memory speed; str.translate looks every character up in a dict.
_SHAPE_BYTES = bytes(ord(_SHAPE_MAP.get(chr(b), chr(b))) for b in range(256))
_PUNCTUATION = '!"#$%&()*+,-./:;<=>?@[\\]^_`{|}~'
# \x1c-\x1f too: str.split() splits on them, bytes.split() does not.
_WORD_BYTES = bytes(32 if chr(b) in _PUNCTUATION or 0x1C <= b <= 0x1F else b for b in range(256))
# For the gate test only, digits split words too: no gate word holds a digit, so a gate word
# is still found whole, and the numbers (a good share of the words) are no words to hash.
_GATE_BYTES = bytes(32 if chr(b).isdigit() else c for b, c in enumerate(_WORD_BYTES))
_WORD_MAP = str.maketrans({c: " " for c in _PUNCTUATION})


def _fold(ch: str) -> str:
    """One character of NFKC's output in its ASCII form where it has one."""
    if ch in _DROPPED:
        return ""
    if ch in _DASHES:
        return "-"
    category = unicodedata.category(ch)
    if category == "Zs":
        return " "
    if category == "Nd":
        return str(unicodedata.decimal(ch))
    return ch


def _replacement(chars: str) -> str:
    """One character, or a base character with the combining marks after it, normalised."""
    if len(chars) == 1:
        folded = _fold(chars)
        if folded != chars:
            return folded
    # NFKC on the whole cluster: "e" + U+0301 (as macOS pastes "é") composes to "é" only
    # when the two are normalised together.
    return "".join(_fold(c) for c in unicodedata.normalize("NFKC", chars))


def _is_mark(ch: str) -> bool:
    return unicodedata.category(ch)[0] == "M"


class Hit(NamedTuple):
    """What a detector found: its kind, where (normalised positions) and, for some kinds, which
    sort it is ("UK National Insurance number"). Never the matched text."""

    kind: str
    start: int
    end: int
    detail: str = ""


def near(
    low: str, start: int, end: int, words: tuple[str, ...], before: int = 48, after: int = 24
) -> bool:
    """Whether one of `words` (lower-case) is written close to [start, end)."""
    window = low[max(0, start - before) : end + after]
    return any(w in window for w in words)


@functools.cache
def _gate_bytes(gates: frozenset[str]) -> frozenset[bytes]:
    """The gate words as the ASCII fast path of `ScanText.words` compares them (a word with
    other characters cannot be in an ASCII text, nor one with a digit in the gate's split)."""
    return frozenset(w.encode("ascii") for w in gates if w.isascii())


@dataclass(slots=True)
class ScanText:
    """One message as the detectors see it."""

    text: str
    """Normalised text; detectors report positions in it."""
    # Breakpoints of the position map: normalised start → (original start, width). Width 0:
    # a linear segment, mapping one to one. Otherwise the segment (a character that became
    # several, or a base character and its marks that became one) maps every position to the
    # `width` original characters it came from.
    _norm_starts: list[int] = field(default_factory=list)
    _segments: list[tuple[int, int, int]] = field(default_factory=list)
    original_length: int = 0
    _low: str | None = None
    _shape: str | None = None
    _words: frozenset[str] | None = None
    gates: frozenset[str] | None = None
    """Every word some detector's gate looks for (router.privacy sets it): a text holding
    none of them gets an empty `words`, without building the set."""

    @property
    def low(self) -> str:
        if self._low is None:
            low = self.text.lower()
            # A few characters lower-case to two (İ): keep positions true.
            self._low = (
                low if len(low) == len(self.text) else "".join(c.lower()[0] for c in self.text)
            )
        return self._low

    @property
    def shape(self) -> str:
        if self._shape is None:
            text = self.text
            self._shape = (
                text.encode("ascii").translate(_SHAPE_BYTES).decode("ascii")
                if text.isascii()
                else text.translate(_SHAPE)
            )
        return self._shape

    @property
    def words(self) -> frozenset[str]:
        """The lower-case words (punctuation splits them): one set that every keyword gate
        looks into instead of a substring search per keyword."""
        if self._words is None:
            low = self.low
            gates = self.gates
            if low.isascii():
                # bytes: splitting and hashing bytes objects is cheaper than str ones, and
                # this is the scan's largest single cost (a 4,000-token text has ~4,000 words).
                # One pass of C-level lookups answers the common case, a text without any
                # word a gate looks for; only then is building the whole set worth it.
                raw = low.encode("ascii")
                if gates is not None and _gate_bytes(gates).isdisjoint(
                    raw.translate(_GATE_BYTES).split()
                ):
                    self._words = frozenset()
                    return self._words
                split = raw.translate(_WORD_BYTES).decode("ascii").split()
            else:
                split = low.translate(_WORD_MAP).split()
            closed = gates is not None and gates.isdisjoint(split)
            self._words = frozenset() if closed else frozenset(split)
        return self._words

    def original(self, start: int, end: int) -> tuple[int, int]:
        """The original text's span for the normalised span [start, end)."""
        if not self._segments:
            return start, end
        first = self._at(start)
        if end <= start:
            return first, first
        norm_start, orig_start, width = self._segments[bisect_right(self._norm_starts, end - 1) - 1]
        return first, orig_start + (end - norm_start if width == 0 else width)

    def _at(self, pos: int) -> int:
        i = bisect_right(self._norm_starts, pos) - 1
        norm_start, orig_start, width = self._segments[i]
        return orig_start + (pos - norm_start) if width == 0 else orig_start


def normalize(text: str) -> ScanText:
    """`text` normalised for matching, with its position map."""
    if text.isascii():
        return ScanText(text, original_length=len(text))
    parts: list[str] = []
    norm_starts: list[int] = []
    segments: list[tuple[int, int, int]] = []
    norm = orig = 0
    for m in _NON_ASCII.finditer(text):
        start, end = m.span()
        # A combining mark after an ASCII letter composes with it: the letter joins the run.
        if start > orig and _is_mark(text[start]):
            start -= 1
        if start > orig:  # the ASCII run before it maps one to one
            norm_starts.append(norm)
            segments.append((norm, orig, 0))
            parts.append(text[orig:start])
            norm += start - orig
        i = start
        while i < end:
            j = i + 1
            while j < end and _is_mark(text[j]):
                j += 1
            rep = _replacement(text[i:j])
            if rep:
                norm_starts.append(norm)
                segments.append((norm, i, 0 if len(rep) == j - i else j - i))
            parts.append(rep)
            norm += len(rep)
            i = j
        orig = end
    if orig < len(text):
        norm_starts.append(norm)
        segments.append((norm, orig, 0))
        parts.append(text[orig:])
    if not segments:
        segments, norm_starts = [(0, 0, 0)], [0]
    return ScanText("".join(parts), norm_starts, segments, original_length=len(text))
