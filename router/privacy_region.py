"""The regions in which the scanner reads a phone number written without a country code
("020 7946 0018" is a London number to a user in the UK, nothing to one in the US).

`privacy_region` in the settings names them (several allowed); empty: the locale's territory
(LC_ALL / LC_MESSAGES / LANG, e.g. "de_DE.UTF-8" → DE), else US.
"""

from __future__ import annotations

import contextlib
import locale
import os
from collections.abc import Iterable

import phonenumbers

__all__ = ["DEFAULT_REGIONS", "check_regions", "locale_region"]


def locale_region() -> str:
    """The territory of the user's locale, or "US" when it names none (C, POSIX)."""
    candidates = [os.environ.get(v, "") for v in ("LC_ALL", "LC_MESSAGES", "LANG")]
    with contextlib.suppress(ValueError):
        candidates.append(locale.getlocale()[0] or "")
    supported = phonenumbers.SUPPORTED_REGIONS
    for value in candidates:
        name = value.split(".", 1)[0].split("@", 1)[0]
        if "_" in name:
            region = name.rsplit("_", 1)[1].upper()
            if region in supported:
                return region
    return "US"


DEFAULT_REGIONS: tuple[str, ...] = (locale_region(),)


def check_regions(regions: Iterable[str]) -> tuple[str, ...]:
    """Upper-cased, deduplicated region codes; ValueError naming an unknown one."""
    out: list[str] = []
    for r in regions:
        code = r.strip().upper()
        if not code:
            continue
        if code == "UK":
            code = "GB"  # what people write; ISO says GB
        if code not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(
                f"privacy_region {r!r} is not a region code; use ISO 3166 codes such as US, GB, "
                "DE, FR (several separated by commas)"
            )
        if code not in out:
            out.append(code)
    return tuple(out) or DEFAULT_REGIONS
