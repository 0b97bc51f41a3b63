"""Numbers that identify a person: phone numbers (phonenumbers, in the user's regions), payment
cards (issuer ranges plus Luhn, any separator), IBANs and national ids and tax numbers
(python-stdnum, with their checksums).

Candidates come from the `shape` view (digits → "0") by substring and small regexes, and the
libraries run only on those few spans: a conversation of numbers that are none of these costs
one pass. An id without a checksum (UK National Insurance number, passport numbers) counts
only with a word naming it close by, as Presidio's recognizers do; so do the ids whose
checksum is a single digit (a tenth of all numbers would pass it).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from stdnum import iban as std_iban
from stdnum import luhn
from stdnum.au import tfn
from stdnum.br import cpf
from stdnum.ca import sin
from stdnum.de import idnr
from stdnum.es import dni, nie
from stdnum.fr import nir
from stdnum.in_ import aadhaar, pan
from stdnum.it import codicefiscale
from stdnum.nl import bsn
from stdnum.us import itin, ssn

from router.privacy_phone import NANP_GROUPED, PHONE_WORDS, phone
from router.privacy_text import Hit, ScanText, near

__all__ = ["find_numbers"]

# A run of digits with separators between them (on the shape view, where every digit is "0").
# Six digits or more: "00" first lets the regex engine skip ahead by substring search.
_RUN = re.compile(r"00(?:[ \-./()]{0,2}0){4,}")
_SEPARATORS = re.compile(r"[ \-./()]+")

# --- look-alikes ------------------------------------------------------------------------------
_DATE = re.compile(r"^(?:\d{4}-\d\d-\d\d|\d{1,2}[./-]\d{1,2}[./-](?:\d{4}|\d\d))$")
_IPV4 = re.compile(r"^\d{1,3}(?:\.\d{1,3}){3}$")
_VERSIONISH = re.compile(r"^\d+(?:\.\d+){2,}$")
_FOURS = re.compile(r"^\d{4}(?:\.\d{4}){2,3}(?:\.\d{1,4})?$")


# --- payment cards ----------------------------------------------------------------------------
# (first digits, allowed lengths): Visa, Mastercard (51–55, 2221–2720), Amex, Discover, JCB,
# Diners, UnionPay, Maestro. ISBNs and EANs (978/979, other 9s) fall outside every range.
_CARD_RANGES: tuple[tuple[int, int, tuple[int, ...]], ...] = (
    (4, 4, (13, 16, 19)),
    (51, 55, (16,)),
    (2221, 2720, (16,)),
    (34, 34, (15,)),
    (37, 37, (15,)),
    (6011, 6011, (16, 17, 18, 19)),
    (644, 649, (16, 19)),
    (65, 65, (16, 19)),
    (3528, 3589, (16, 17, 18, 19)),
    (300, 305, (14, 16, 19)),
    (36, 36, (14, 16, 19)),
    (38, 39, (14, 16, 19)),
    (62, 62, (16, 17, 18, 19)),
    (50, 50, (12, 13, 14, 15, 16, 17, 18, 19)),
    (56, 58, (12, 13, 14, 15, 16, 17, 18, 19)),
    (67, 67, (12, 13, 14, 15, 16, 17, 18, 19)),
)


def _issuer_range(digits: str) -> bool:
    for low, high, lengths in _CARD_RANGES:
        width = len(str(low))
        if len(digits) in lengths and low <= int(digits[:width]) <= high:
            return True
    return False


def _card_grouping(groups: list[int], separators: set[str]) -> bool:
    """Card numbers are written whole, in fours (the last group shorter), or as Amex and
    Diners print them; one kind of separator throughout."""
    if len(groups) == 1:
        return True
    if len(separators) != 1:
        return False
    if all(g == 4 for g in groups[:-1]) and 1 <= groups[-1] <= 4:
        return True
    return groups in ([4, 6, 5], [4, 6, 4])


# Words that make a long number something else: an order, a parcel, a book.
_NOT_PERSONAL = (
    "order",
    "tracking",
    "invoice",
    "ref",
    "isbn",
    "ean",
    "serial",
    "ticket",
    "parcel",
    "shipment",
    "sku",
    "batch",
    "build",
    "version",
    "id ",
)


def _card(raw: str, digits: str) -> bool:
    if not 12 <= len(digits) <= 19 or not _issuer_range(digits) or not luhn.is_valid(digits):
        return False
    groups = [len(g) for g in _SEPARATORS.split(raw) if g]
    return _card_grouping(groups, set(_SEPARATORS.findall(raw)))


# --- national ids -----------------------------------------------------------------------------
_ID_WORDS = (
    "ssn", "social security", "itin", "taxpayer", "tax id", "tax number", "tin", "steuer",
    "identifikationsnummer", "idnr", "nir", "sécurité sociale", "securite sociale", "insee",
    "dni", "nie", "nif", "documento", "codice fiscale", "fiscal", "bsn", "burgerservice", "sofi",
    "aadhaar", "aadhar", "uid", "pan", "permanent account", "sin", "social insurance", "tfn",
    "tax file", "cpf", "national insurance", "ni number", "ni no", "nino", "id number",
    "id card", "identity", "ausweis", "identité", "identidad", "passport", "reisepass",
    "passeport", "pasaporte", "passaporto", "paspoort",
)  # fmt: skip
_PASSPORT_WORDS = ("passport", "reisepass", "passeport", "pasaporte", "passaporto", "paspoort")
_NINO_WORDS = ("national insurance", "ni number", "ni no", "nino", "nin ")


@dataclass(frozen=True, slots=True)
class _Id:
    detail: str
    pattern: re.Pattern[str]
    valid: Callable[[str], bool]
    words: tuple[str, ...] | None
    """Words of which one must be near; None: the checksum and format are strong enough."""
    digits: tuple[int, ...]
    """How many digits the candidate run may hold (a cheap test before the regex)."""
    glued: bool = False
    """Letters belong right next to the digits (DNI, codice fiscale, PAN...)."""


def _nino(value: str) -> bool:
    v = value.replace(" ", "").upper()
    return v[:2] not in ("BG", "GB", "KN", "NK", "NT", "TN", "ZZ")


# Published examples, not anyone's number: the SSA's advertising range and the famous ones.
_EXAMPLE_SSNS = frozenset({"123456789", "078051120", "219099999", "457555462"}) | {
    f"98765432{d}" for d in "0123456789"
}


def _ssn(value: str) -> bool:
    # stdnum's compact() strips only dashes: "536 22 8726" must lose its spaces here.
    compact = value.replace(" ", "")
    return ssn.is_valid(compact) and ssn.compact(compact) not in _EXAMPLE_SSNS


def _itin(value: str) -> bool:
    return itin.is_valid(value.replace(" ", ""))


def _strong_ssn(value: str) -> bool:
    return "-" in value and _ssn(value)


_SSN_WORDS = ("ssn", "social security")
_IDS: tuple[_Id, ...] = (
    _Id(
        "US social security number",
        re.compile(r"(?<![\d-])\d{3}-\d\d-\d{4}(?![\d-])"),
        _strong_ssn,
        None,
        (9,),
    ),
    _Id(
        "US social security number",
        re.compile(r"(?<!\d)\d{3} ?\d\d ?\d{4}(?!\d)"),
        _ssn,
        _SSN_WORDS,
        (9,),
    ),
    _Id(
        "US ITIN", re.compile(r"(?<![\d-])9\d\d-[5-9]\d-\d{4}(?![\d-])"), itin.is_valid, None, (9,)
    ),
    _Id(
        "US ITIN",
        re.compile(r"(?<!\d)9\d\d ?[5-9]\d ?\d{4}(?!\d)"),
        _itin,
        ("itin", "taxpayer"),
        (9,),
    ),
    _Id(
        "UK National Insurance number",
        re.compile(
            r"(?<![A-Za-z0-9])[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d\d ?\d\d ?\d\d ?"
            r"[A-D](?![A-Za-z0-9])"
        ),
        _nino,
        _NINO_WORDS,
        (6,),
        glued=True,
    ),
    _Id(
        "German tax id",
        re.compile(r"(?<!\d)\d\d ?\d{3} ?\d{3} ?\d{3}(?!\d)"),
        idnr.is_valid,
        ("steuer", "tax id", "identifikationsnummer", "idnr", "tin", "tax number"),
        (11,),
    ),
    _Id(
        "French social security number (NIR)",
        re.compile(r"(?<!\d)[12] ?\d\d ?\d\d ?(?:\d\d|2[AB]) ?\d{3} ?\d{3} ?\d\d(?!\d)"),
        nir.is_valid,
        None,
        (13, 15),
    ),
    _Id(
        "Spanish DNI",
        re.compile(r"(?<![\dA-Za-z])\d{8}-?[A-Z](?![A-Za-z0-9])"),
        dni.is_valid,
        None,
        (8,),
        glued=True,
    ),
    _Id(
        "Spanish NIE",
        re.compile(r"(?<![\dA-Za-z])[XYZ]-?\d{7}-?[A-Z](?![A-Za-z0-9])"),
        nie.is_valid,
        None,
        (7,),
        glued=True,
    ),
    _Id(
        "Italian codice fiscale",
        re.compile(
            r"(?<![A-Za-z0-9])[A-Z]{6}[0-9LMNP-V]{2}[A-Z][0-9LMNP-V]{2}[A-Z]"
            r"[0-9LMNP-V]{3}[A-Z](?![A-Za-z0-9])"
        ),
        codicefiscale.is_valid,
        None,
        (1, 2, 3),
        glued=True,
    ),
    _Id(
        "Dutch BSN",
        re.compile(r"(?<!\d)\d{4}\.?\d\d\.?\d{3}(?!\d)"),
        bsn.is_valid,
        ("bsn", "burgerservice", "sofi"),
        (9,),
    ),
    _Id(
        "Indian Aadhaar",
        re.compile(r"(?<!\d)[2-9]\d{3} ?\d{4} ?\d{4}(?!\d)"),
        aadhaar.is_valid,
        ("aadhaar", "aadhar", "uid"),
        (12,),
    ),
    _Id(
        "Indian PAN",
        re.compile(
            r"(?<![A-Za-z0-9])[A-Z]{3}[PCHFATBLJG][A-Z]\d{4}[A-Z]"
            r"(?![A-Za-z0-9])"
        ),
        pan.is_valid,
        None,
        (4,),
        glued=True,
    ),
    _Id(
        "Canadian SIN",
        re.compile(r"(?<!\d)\d{3}[ -]?\d{3}[ -]?\d{3}(?!\d)"),
        sin.is_valid,
        ("sin", "social insurance"),
        (9,),
    ),
    _Id(
        "Australian TFN",
        re.compile(r"(?<!\d)\d{3} ?\d{3} ?\d{2,3}(?!\d)"),
        tfn.is_valid,
        ("tfn", "tax file"),
        (8, 9),
    ),
    _Id(
        "Brazilian CPF",
        re.compile(r"(?<!\d)\d{3}\.\d{3}\.\d{3}-\d\d(?!\d)"),
        cpf.is_valid,
        None,
        (11,),
    ),
    _Id("Brazilian CPF", re.compile(r"(?<!\d)\d{11}(?!\d)"), cpf.is_valid, ("cpf",), (11,)),
    _Id(
        "passport number",
        re.compile(r"(?<![A-Za-z0-9])[A-Z]{0,2}\d{6,9}[A-Z]?(?![A-Za-z0-9])"),
        lambda _: True,
        _PASSPORT_WORDS,
        (6, 7, 8, 9),
        glued=True,
    ),
)
_CONTEXT_SET = frozenset(phrase.split()[0] for phrase in (*_ID_WORDS, *PHONE_WORDS)) | {
    "calls",
    "phones",
    "mobiles",
    "numbers",
    "passports",
    "ssns",
    "tel",
    "steuer-id",
    "telefonnummer",
    "handynummer",
    "steuernummer",
    "steueridentifikationsnummer",
    "sozialversicherungsnummer",
    "ausweisnummer",
    "passnummer",
    "telefoonnummer",
}
# The specs that can match a run of n digits (glued to letters or not, with an id word in the
# message or not): looked up once instead of testing all of them per candidate.
_SPECS_FOR: dict[tuple[int, bool, bool], tuple[_Id, ...]] = {
    (n, glued, context): tuple(
        spec
        for spec in _IDS
        if n in spec.digits
        and (spec.glued or not glued)
        and (context or spec.words is None)
    )
    for n in range(1, 20)
    for glued in (False, True)
    for context in (False, True)
}
GATE_WORDS = _CONTEXT_SET
"""The words this module's gates look for (router.privacy joins every module's)."""
# Ids with letters in them (PAN, codice fiscale): found from "two capitals, two digits".
_LETTER_IDS = tuple(spec for spec in _IDS if spec.glued and spec.words is None)


def _context(t: ScanText) -> bool:
    """Whether the message has any word that names a phone number or an id (one set lookup;
    the near() checks below run only then)."""
    return not _CONTEXT_SET.isdisjoint(t.words)


def _ids(t: ScanText, start: int, end: int, n: int, glued: bool, context: bool) -> Iterator[Hit]:
    """National ids in a window around a candidate run of `n` digits."""
    lo, hi = max(0, start - 12), min(len(t.text), end + 12)
    for spec in _SPECS_FOR.get((n, glued, context), ()):
        if spec.words is not None and not (context and near(t.low, start, end, spec.words, 64)):
            continue
        for m in spec.pattern.finditer(t.text, lo, hi):
            if m.end() <= start or m.start() >= end:
                continue
            if spec.valid(m.group()):
                yield Hit("national_id", m.start(), m.end(), spec.detail)
                return


# --- IBANs ------------------------------------------------------------------------------------
_IBAN = re.compile(r"[A-Z]{2}\d\d(?: ?[A-Z0-9]){10,32}")


def _letter_ids(t: ScanText, i: int) -> Iterator[Hit]:
    lo, hi = max(0, i - 8), min(len(t.text), i + 20)
    for spec in _LETTER_IDS:
        for m in spec.pattern.finditer(t.text, lo, hi):
            if spec.valid(m.group()):
                yield Hit("national_id", m.start(), m.end(), spec.detail)
                return


def _ibans(t: ScanText) -> Iterator[Hit]:
    i = t.shape.find("AA00")
    while i >= 0:
        yield from _letter_ids(t, i)
        m = _IBAN.match(t.text, i)
        if m is not None and (i == 0 or not t.text[i - 1].isalnum()):
            compact = m.group().replace(" ", "")
            # The greedy match may run into the next word: try the lengths IBANs come in.
            for length in range(min(34, len(compact)), 14, -1):
                if std_iban.is_valid(compact[:length]):
                    # map the compact length back to the spaced text
                    seen, j = 0, i
                    while seen < length:
                        if t.text[j] != " ":
                            seen += 1
                        j += 1
                    yield Hit("iban", i, j, "")
                    break
        i = t.shape.find("AA00", i + 4)


# --- the pass ----------------------------------------------------------------------------------


def find_numbers(t: ScanText, regions: tuple[str, ...]) -> Iterator[Hit]:
    """Phone numbers, cards, IBANs and national ids in one message."""
    yield from _ibans(t)
    if "00" not in t.shape:
        return
    named = _context(t)
    for start, end in _runs(t, named):
        hit = _classify(t, start, end, regions, named)
        if hit is not None:
            yield hit
        elif " " in t.text[start:end] and _SELF_GROUPED.search(t.text, start, end):
            # Two numbers side by side ("555-123-4567 536-22-8726"): try the groups the
            # spaces make, longest first.
            yield from _pieces(t, start, end, regions, named)


def _whole(shape: str, start: int) -> int:
    """The start of the run whose match begins at `start`: a run may begin with a shorter
    group ("5 551 2345") that the match (two digits first) left out."""
    while start >= 2 and shape[start - 1] in " -./()" and shape[start - 2] == "0":
        start -= 2
        while start > 0 and shape[start - 1] == "0":
            start -= 1
    return start


def _runs(t: ScanText, named: bool) -> Iterator[tuple[int, int]]:
    """Every run of six digits or more (separators allowed between them) worth a look. In a
    message that names no id or phone number, a plain number (six to eleven digits, nothing
    glued to it, no separators, no trunk "0") is nothing: most runs are such numbers, and
    they are passed over here with a few C-level tests instead of a call each."""
    shape, text = t.shape, t.text
    for m in _RUN.finditer(shape):
        start, end = m.span()
        if (
            not named
            and end - start < 12
            and shape.count("0", start, end) == end - start
            and text[start] != "0"
            and shape[start - 1 : start] not in ("A", "a")
            and shape[end : end + 1] not in ("A", "a")
            and not (shape[start - 1 : start] in _SEPS and shape[start - 2 : start - 1] == "0")
        ):
            continue
        yield _whole(shape, start), end


_SEPS = frozenset(" -./()")


# A token with its own separators ("555-123-4567"): two of them side by side are two numbers.
# Digits grouped by spaces alone ("2221 0276 6327 1255") are one number, not pieces.
_SELF_GROUPED = re.compile(r"\d[-./()]\d")


def _pieces(
    t: ScanText, start: int, end: int, regions: tuple[str, ...], named: bool
) -> Iterator[Hit]:
    bounds = [(m.start() + start, m.end() + start) for m in re.finditer(r"\S+", t.text[start:end])]
    if len(bounds) > 12:
        return
    taken: list[tuple[int, int]] = []
    for size in range(len(bounds) - 1, 0, -1):
        for i in range(len(bounds) - size + 1):
            s, e = bounds[i][0], bounds[i + size - 1][1]
            if any(s < te and ts < e for ts, te in taken):
                continue
            hit = _classify(t, s, e, regions, named)
            if hit is not None:
                taken.append((s, e))
                yield hit


def _classify(
    t: ScanText, start: int, end: int, regions: tuple[str, ...], named: bool
) -> Hit | None:
    """What the run at [start, end) is, if anything; `named`: the message has a word naming an
    id or a phone number."""
    raw = t.text[start:end]
    bare = raw.isdigit()
    n = len(raw) if bare else sum(c.isdigit() for c in raw)
    # Letters glued to the run make it part of an identifier (a hash, a code): only the id
    # patterns that say exactly where letters belong look at it then.
    glued = (start > 0 and t.text[start - 1].isalpha()) or (
        end < len(t.text) and t.text[end].isalpha()
    )
    if n < 6 and not glued:
        return None
    # The common case, a plain number in a text that names no id or phone: nothing here
    # reads it without a word (a trunk "0" or twelve digits and more aside).
    if bare and not named and not glued and n < 12 and raw[0] != "0":
        return None
    # Numbers side by side ("92425 1497375"): no id of that length stands alone, no card
    # is that short, and two groups without a trunk "0" or a word are no phone number.
    if (
        not named
        and not glued
        and n < 12
        and n not in (9, 11)
        and raw[0] not in "0(+"
        and sum(raw.count(c) for c in " -.") < 2
    ):
        return None
    if not bare and (_DATE.match(raw) or _IPV4.match(raw)):
        return None
    if not bare and _VERSIONISH.match(raw) and not (_FOURS.match(raw) or NANP_GROUPED.match(raw)):
        return None
    found = next(_ids(t, start, end, n, glued, named), None)
    if found is not None:
        return found
    if glued or n < 7:
        return None
    if start > 0 and t.text[start - 1] in "+(":
        start -= 1
        raw = t.text[start:end]
    if near(t.low, start, start, _NOT_PERSONAL, 24, 0):
        return None
    digits = "".join(c for c in raw if c.isdigit())
    if _card(raw, digits):
        return Hit("card", start, end, "")
    if phone(t, raw, start, end, digits, regions, named):
        return Hit("phone", start, end, "")
    return None
