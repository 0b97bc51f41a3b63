"""Secrets and credentials: provider tokens by their documented prefixes (AWS, Google, Stripe,
GitHub, GitLab, npm, PyPI, Hugging Face, Slack, Twilio, SendGrid, OpenAI, Anthropic), Azure's
storage account keys, SAS signatures, shared access keys and client secrets, JWTs,
PEM private-key blocks, `scheme://user:password@host` URLs, `password = …` assignments and
"my password is …" phrases, and high-entropy strings next to a word such as "secret".

The same families as detect-secrets' plugins, written as one gated pass: detect-secrets scans
a file line by line through every plugin (about a millisecond per message here, see
scripts/bench/privacy.py), too slow for a check on every request. Tokens are found by
translating every token character to "x" and searching for a long run of "x" (C speed); only
those runs meet a regex.

Documentation placeholders are not findings: `sk-...`, `YOUR_API_KEY`, AWS's own
`AKIAIOSFODNN7EXAMPLE`, `xxxx`, `<token>`, `${SECRET}`.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterator

from router.privacy_text import Hit, ScanText, near

__all__ = ["find_secrets"]

_TOKEN_CHARS = string.ascii_letters + string.digits + "_-+/=."
_TO_X = str.maketrans({c: "x" for c in _TOKEN_CHARS})
_TO_X_BYTES = bytes(ord("x") if chr(b) in _TOKEN_CHARS else b for b in range(256))
_MIN_RUN = 16
_X_RUN = re.compile(r"x+")

_KNOWN = re.compile(
    r"(?<![A-Za-z0-9])(?:"
    r"(?P<aws>(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16})(?![A-Za-z0-9])"
    r"|(?P<google>AIza[0-9A-Za-z_-]{35})"
    r"|(?P<stripe>(?:sk|rk)_live_[0-9A-Za-z]{16,})"
    r"|(?P<github>gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,})"
    r"|(?P<gitlab>gl(?:pat|dt|rt|ptt)-[A-Za-z0-9_-]{20,})"
    r"|(?P<npm>npm_[A-Za-z0-9]{36})"
    r"|(?P<pypi>pypi-AgE[A-Za-z0-9_-]{40,})"
    r"|(?P<hf>hf_[A-Za-z0-9]{30,})"
    r"|(?P<slack>xox[abposre]-[A-Za-z0-9-]{10,})"
    r"|(?P<twilio>SK[0-9a-f]{32})(?![A-Za-z0-9])"
    r"|(?P<sendgrid>SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,})"
    r"|(?P<anthropic>sk-ant-[A-Za-z0-9_-]{20,})"
    r"|(?P<openai>sk-(?:proj-|svcacct-|admin-)?[A-Za-z0-9_-]{20,})"
    r"|(?P<jwt>eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"
    r"|(?P<azure>[A-Za-z0-9+/]{86}==)"
    r")"
)
_PLACEHOLDER = re.compile(
    r"EXAMPLE|example|XXXX|xxxx|YOUR|your|REPLACE|replace|placeholder|PLACEHOLDER|\.\.\.|"
    r"\*\*\*|0000000|<|\$\{|\{\{|dummy|DUMMY|redacted|REDACTED"
)
_SECRET_WORDS = (
    "secret", "token", "api key", "apikey", "api_key", "api-key", "access key", "access_key",
    "password", "passwd", "pwd", "credential", "auth", "bearer", "private key", "accountkey",
    "signing key", "client_secret", "key=", "key:", "key =", "key :",
)  # fmt: skip
_NOT_SECRET_WORDS = ("commit", "sha", "hash", "revision", "uuid", "checksum", "digest", "md5")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_HEX = re.compile(r"[0-9a-f]+|[0-9A-F]+")
_PEM = re.compile(
    r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----(?:.*?-----END [A-Z0-9 ]+-----)?",
    re.DOTALL,
)
# Azure's credentials hold "~", "%" or ";", which split the token runs below: each has a
# marker of its own. A SAS token's signature (with its sv=/se=/sp= fields), a Service Bus or
# storage connection string's SharedAccessKey/Signature, and an Entra ID client secret (three
# characters, a digit, "Q~": the shape gitleaks' azure-ad-client-secret rule matches).
_AZURE_SAS = re.compile(r"(?<![A-Za-z0-9])sig=(?P<v>[A-Za-z0-9%+/=]{20,})")
_AZURE_SAS_FIELDS = ("sv=", "se=", "sp=")
_AZURE_SHARED = re.compile(r"SharedAccess(?:Key|Signature)=(?P<v>[^;\s\"'&]{20,})")
_AZURE_CLIENT_SECRET = re.compile(
    r"(?<![A-Za-z0-9_~.-])[A-Za-z0-9_~.]{3}\dQ~[A-Za-z0-9_~.-]{31,34}(?![A-Za-z0-9_~.-])"
)
_CREDENTIAL_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{1,20}://[^\s:/@]*:(?P<v>[^\s/@]{1,200})@")

_VALUE = r"[\"'“‘]?(?P<v>[^\s\"'”’,;]{3,})"
_ASSIGN = re.compile(
    r"(?i)(?<![A-Za-z])(?:password|passwd|passwort|kennwort|pwd|pass|passcode|passphrase|"
    r"mot de passe|contraseña|contrasena|wachtwoord|"
    r"secret|client_secret|secret_key|api[_-]?key|apikey|access[_-]?key|auth[_-]?token|"
    r"access[_-]?token|token|accountkey)[\"']?\s*(?::|=|=>)\s*" + _VALUE
)
_PHRASE = re.compile(
    r"(?i)\b(?:password|passcode|passphrase|passwort|kennwort|mot de passe|contraseña|"
    r"contrasena|wachtwoord|pin(?: code| number)?)\s+(?:is|was|is now|ist|est|es|è|je)\s*"
    r"[:\-]?\s*" + _VALUE
)
_LOGIN = re.compile(
    r"(?i)\b(?:login|username|user|user name|benutzer|utilisateur|usuario)\s*[:=]?\s*"
    r"[^\s/:,;]+\s*(?:/|,|;|\s(?:and\s+)?(?:password|pass|pwd|pw)\s*[:=]?)\s*" + _VALUE
)
_PASSWORD_GATE = frozenset(
    [
        "password",
        "passw",
        "passwd",
        "pwd",
        "pass",
        "passcode",
        "passc",
        "passphrase",
        "passp",
        "passwort",
        "kennwort",
        "kennw",
        "secret",
        "token",
        "key",
        "apikey",
        "accountkey",
        "login",
        "user",
        "username",
        "usern",
        "benutzer",
        "utilisateur",
        "utili",
        "usuario",
        "pin",
        "mot",
        "contraseña",
        "contr",
        "contrasena",
        "wachtwoord",
        "wacht",
    ]
)
GATE_WORDS = _PASSWORD_GATE
"""The words this module's gates look for (router.privacy joins every module's)."""
# Words that follow "password is" in sentences about passwords, not in a password.
_NOT_VALUES = frozenset(
    [
        "required",
        "incorrect",
        "wrong",
        "invalid",
        "too",
        "not",
        "correct",
        "expired",
        "the",
        "a",
        "an",
        "my",
        "your",
        "same",
        "different",
        "strong",
        "weak",
        "long",
        "short",
        "case",
        "being",
        "stored",
        "hashed",
        "set",
        "changed",
        "reset",
        "empty",
        "blank",
        "missing",
        "needed",
        "necessary",
        "secure",
        "safe",
        "still",
        "now",
        "also",
        "only",
        "what",
        "which",
        "that",
        "this",
        "saved",
        "encrypted",
        "protected",
        "visible",
        "hidden",
        "shown",
        "at",
        "in",
        "on",
        "for",
        "to",
        "of",
        "and",
        "or",
        "but",
        "valid",
        "used",
        "there",
        "here",
        "fine",
        "ok",
        "okay",
        "good",
        "bad",
        "easy",
        "hard",
        "simple",
        "complex",
        "very",
        "so",
        "really",
        "probably",
        "usually",
        "always",
        "never",
        "sent",
        "displayed",
        "printed",
        "ignored",
        "accepted",
        "rejected",
        "it",
        "is",
        "was",
        "will",
        "should",
        "must",
        "can",
        "cannot",
        "could",
        "would",
        "none",
        "null",
        "true",
        "false",
        "yes",
        "no",
        "please",
        "mandatory",
        "optional",
        "enabled",
        "disabled",
        "changeable",
        "unknown",
        "forgotten",
        "lost",
        "leaked",
        "compromised",
        "typed",
        "entered",
        "asked",
        "prompted",
        "requested",
        "generated",
        "created",
        "updated",
        "stolen",
        "shared",
        "written",
        "case-sensitive",
    ]
)


def _placeholder(value: str) -> bool:
    if _PLACEHOLDER.search(value):
        return True
    body = value.split("_")[-1] if value.count("_") >= 2 else value
    return len(body) >= 8 and len(set(body)) <= 3


def _real_value(value: str) -> bool:
    if _placeholder(value):
        return False
    v = value.rstrip(".,;:!?)]}")
    if len(v) < 3 or v.lower() in _NOT_VALUES or _placeholder(v):
        return False
    return not (v.startswith("$") or v.startswith("%") or v.lower() in ("password", "secret"))


def _entropy(s: str) -> float:
    counts = Counter(s)
    return -sum(c / len(s) * math.log2(c / len(s)) for c in counts.values())


def _high_entropy(value: str) -> bool:
    if len(value) < 16 or _UUID.fullmatch(value) or _placeholder(value):
        return False
    classes = sum(any(f(c) for c in value) for f in (str.isupper, str.islower, str.isdigit))
    limit = 3.0 if _HEX.fullmatch(value) else 3.5
    return classes >= 2 and _entropy(value) >= limit


def _runs(t: ScanText) -> Iterator[tuple[int, int]]:
    text = t.text
    xs = (
        text.encode("ascii").translate(_TO_X_BYTES).decode("ascii")
        if text.isascii()
        else text.translate(_TO_X)
    )
    needle = "x" * _MIN_RUN
    i = xs.find(needle)
    while i >= 0:
        m = _X_RUN.match(xs, i)
        assert m is not None
        yield i, m.end()
        i = xs.find(needle, m.end())


def _tokens(t: ScanText) -> Iterator[Hit]:
    aws_at = -1
    for start, end in _runs(t):
        run = t.text[start:end]
        found = False
        for m in _KNOWN.finditer(run):
            if _placeholder(m.group()):
                continue
            kind = m.lastgroup or ""
            if kind == "aws":
                aws_at = start
            yield Hit("api_token", start + m.start(), start + m.end(), kind)
            found = True
        if found:
            continue
        # The value of `NAME=value` inside one run, or the run itself.
        cut = max(run.rfind("="), run.rfind(":"))
        value_start = start + cut + 1 if cut >= 0 else start
        value = t.text[value_start:end].strip(".")
        if not _high_entropy(value):
            continue
        named = near(t.low, start, value_start, _SECRET_WORDS, 32, 0)
        near_key_id = aws_at >= 0 and abs(start - aws_at) < 200 and len(value) == 40
        if (named or near_key_id) and not near(t.low, start, value_start, _NOT_SECRET_WORDS, 24, 0):
            yield Hit("api_token", value_start, value_start + len(value), "high-entropy string")


def _passwords(t: ScanText) -> Iterator[Hit]:
    if _PASSWORD_GATE.isdisjoint(t.words):
        return
    seen: set[int] = set()
    for pattern in (_ASSIGN, _PHRASE, _LOGIN):
        for m in pattern.finditer(t.text):
            value = m.group("v")
            if m.start("v") in seen or not _real_value(value):
                continue
            seen.add(m.start("v"))
            trimmed = value.rstrip(".,;:!?)]}")
            yield Hit("password", m.start("v"), m.start("v") + len(trimmed), "")


def _azure(t: ScanText) -> Iterator[Hit]:
    text = t.text
    # A one-character test first (memchr speed): a SAS has "&" between its fields, a
    # connection string ";" between its parts, a client secret its "~".
    if "&" in text and "sig=" in text and any(f in text for f in _AZURE_SAS_FIELDS):
        for m in _AZURE_SAS.finditer(text):
            if not _placeholder(m.group("v")):
                yield Hit("api_token", m.start("v"), m.end("v"), "Azure SAS signature")
    if ";" in text and "SharedAccess" in text:
        for m in _AZURE_SHARED.finditer(text):
            if _real_value(m.group("v")):
                yield Hit("api_token", m.start("v"), m.end("v"), "Azure shared access key")
    if "~" in text and "Q~" in text:
        for m in _AZURE_CLIENT_SECRET.finditer(text):
            if not _placeholder(m.group()):
                yield Hit("api_token", m.start(), m.end(), "Azure client secret")


def find_secrets(t: ScanText) -> Iterator[Hit]:
    """Every secret in one message."""
    text = t.text
    # A one-character test runs at memchr speed, a longer one at a few times that: both key
    # markers hold a capital Y, and most texts have none.
    if "Y" in text and "PRIVATE KEY" in text:
        for m in _PEM.finditer(text):
            yield Hit("private_key", m.start(), m.end(), "")
    if "Y" in text and "PuTTY-User-Key-File" in text:
        i = text.find("PuTTY-User-Key-File")
        yield Hit("private_key", i, len(text), "PuTTY key")
    if "://" in text:
        for m in _CREDENTIAL_URL.finditer(text):
            if _real_value(m.group("v")):
                yield Hit("credential_url", m.start("v"), m.end("v"), "")
    yield from _azure(t)
    yield from _tokens(t)
    yield from _passwords(t)
