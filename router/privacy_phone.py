"""Phone numbers (phonenumbers): international ones, and national ones read in the user's
regions, with a trunk prefix, brackets, three groups or a word saying so; fictional and
documentation ranges (NANP 555-01xx, Ofcom's drama numbers) are not findings.

phonenumbers is pure Python and costs tens of microseconds a call, so router.privacy_numbers
calls `phone` only on the few candidates that look like one, and a number of a length no
region uses is rejected before the region lookup.
"""

from __future__ import annotations

import functools
import re

import phonenumbers

from router.privacy_text import ScanText, near

__all__ = ["NANP_GROUPED", "PHONE_WORDS", "phone"]

PHONE_WORDS = (
    "call", "phone", "tel", "mobile", "cell", "number", "fax", "whatsapp", "text me", "sms",
    "ring", "reach me", "contact", "dial", "telefon", "handy", "mobil", "rufnummer", "portable",
    "téléphone", "numéro", "teléfono", "móvil", "celular", "telefono", "cellulare", "nummer",
    "bel me", "signal",
)  # fmt: skip

NANP_GROUPED = re.compile(r"^(?:\+?1[ .-]?)?(?:\(\d{3}\) ?|\d{3}[ .-])\d{3}[ .-]\d{4}$")
_NANP = frozenset({"US", "CA"})
_SEPARATORS = re.compile(r"[ \-./()]+")
# Ofcom's ranges for drama (national numbers without the trunk "0").
_GB_DRAMA = (
    "2079460", "7700900", "1632960", "1134960", "1144960", "1154960", "1164960", "1174960",
    "1184960", "1214960", "1314960", "1414960", "1514960", "1614960", "2896496", "2920180",
    "8081570", "9098790",
)  # fmt: skip


@functools.cache
def _trunk(region: str) -> str:
    """The national (trunk) prefix a number dialled inside `region` starts with ("0" in most
    of Europe; "" where there is none, e.g. Spain and Italy)."""
    meta = phonenumbers.PhoneMetadata.metadata_for_region(region)
    return (meta.national_prefix or "") if meta is not None else ""


def phone(
    t: ScanText,
    raw: str,
    start: int,
    end: int,
    digits: str,
    regions: tuple[str, ...],
    context: bool,
) -> bool:
    """Whether `raw` (at [start, end) of `t`, its digits `digits`) is a phone number; `context`:
    the message has a word naming a phone number or an id somewhere."""
    if not 7 <= len(digits) <= 15 or "/" in raw:
        return False
    international = raw.startswith("+") or digits.startswith("00")
    candidate = (
        ("+" + digits[2:] if digits.startswith("00") else "+" + digits) if international else raw
    )
    groups = len([g for g in _SEPARATORS.split(raw) if g])
    # A bare run of digits reads as a phone number only when it looks like one: a trunk
    # prefix, brackets, three groups or more, or a word saying so.
    shaped = (
        international
        or raw.startswith(("0", "("))
        or groups >= 3
        or (context and near(t.low, start, end, PHONE_WORDS))
    )
    if not shaped:
        return False
    for region in (None,) if international else regions:
        if (
            region is not None
            and region not in _NANP
            and not raw.lstrip("(").startswith(_trunk(region))
        ):
            continue  # written nationally, a number there starts with the trunk prefix
        try:
            number = phonenumbers.parse(candidate, region)
        except phonenumbers.NumberParseException:
            continue
        national = str(number.national_number)
        # Most candidates are numbers of a length no region of their country code uses:
        # invalid, and the region lookup (a pattern match per NANP region) can be skipped
        # unless the number could be a fictional one (which ends the search).
        lengths = _lengths(number.country_code)
        if (
            lengths is not None
            and len(phonenumbers.national_significant_number(number)) not in lengths
            and not _maybe_fictional(national)
        ):
            continue
        # is_valid_number(number) is exactly this, with the region looked up once.
        code = phonenumbers.region_code_for_number(number)
        if _fictional_phone(national, code or region or ""):
            return False
        if code is not None and phonenumbers.is_valid_number_for_region(number, code):
            return True
    # North American numbers grouped 3-3-4 read as phone numbers even in unassigned area codes
    # (not the fictional 555-01xx: the last seven digits start 55501; digits has seven or more).
    if "US" in regions or "CA" in regions:
        return bool(NANP_GROUPED.match(raw)) and not digits[-7:].startswith("55501")
    return False


def _fictional_phone(national: str, region: str) -> bool:
    """Numbers set aside for fiction and documentation: NANP 555-0100…0199, Ofcom's drama
    ranges in the UK."""
    if region in ("US", "CA") or (national.startswith("1") and len(national) == 11):
        n = national[-10:] if len(national) >= 10 else national[-7:]
        local = n[-7:]
        return local.startswith("55501")
    if region == "GB":
        return national.lstrip("0").startswith(_GB_DRAMA)
    return False


@functools.cache
def _lengths(country_code: int) -> frozenset[int] | None:
    """Every national number length that is valid in some region of this calling code (None:
    a region sets no lengths, so any may be). phonenumbers checks the general description's
    lengths before any pattern: a number of another length is invalid everywhere."""
    lengths: set[int] = set()
    for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(country_code, ()):
        meta = phonenumbers.PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
        if meta is None or meta.general_desc is None:
            continue  # no number is valid there
        if not meta.general_desc.possible_length:
            return None
        lengths.update(meta.general_desc.possible_length)
    return frozenset(lengths)


def _maybe_fictional(national: str) -> bool:
    """Whether `national` is fictional in some region (_fictional_phone tells apart only
    NANP, GB and the rest)."""
    return any(_fictional_phone(national, r) for r in ("US", "GB", ""))
