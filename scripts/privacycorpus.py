# ruff: noqa: E501  (case templates read better on one line each)
"""Writes tests/data/privacy_corpus.jsonl: the labelled cases the privacy scanner is measured on
(tests/test_privacy_corpus.py, scripts/bench/privacy.py, `tandem privacy test`).

    python -m scripts.privacycorpus            # rewrites the file (seeded: same file each run)

Each row: {"messages": [{"role", "content"}...], "private": true|false, "kind": "<family>",
"sub": "<sub-kind>" (national ids, tokens and key blocks), "case": "<what it is>"}. The private
rows of those three families go round-robin over every sub-kind, so each one is present. Half the rows are private; the other half are look-alikes of the same
families (reserved domains, fictional numbers, bad checksums, ISBNs, placeholders, UUIDs,
hashes, versions, timestamps, general questions). The private value sits in the last user
message, an earlier turn or the system prompt, and a share of rows write it with Unicode
spaces, dashes, full-width characters, zero-width characters or decomposed accents.

Identifiers get valid check digits from the same formulas the libraries check (python-stdnum
helpers where it has them, else rejection sampling against stdnum's `is_valid`).
"""

from __future__ import annotations

import base64
import json
import random
import string
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from stdnum import iban as std_iban
from stdnum import luhn, verhoeff
from stdnum.au import tfn
from stdnum.br import cpf
from stdnum.de import idnr
from stdnum.es import nie
from stdnum.fr import nir
from stdnum.iso7064 import mod_97_10
from stdnum.it import codicefiscale
from stdnum.nl import bsn
from stdnum.us import itin, ssn

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "privacy_corpus.jsonl"
SEED = 13
R = random.Random(SEED)

QUESTIONS = [
    "Can you help me write a short note about this?",
    "Please draft a polite reply.",
    "What should I do next?",
    "Summarise this for me in two lines.",
    "Is this message clear enough?",
    "Translate it into French, please.",
]
NAMES = ["Jane Doe", "Tom Becker", "Ana García", "Luca Rossi", "Sanne de Vries", "Priya Shah"]


def digits(n: int) -> str:
    return "".join(R.choice(string.digits) for _ in range(n))


def until(valid: Callable[[str], bool], make: Callable[[], str]) -> str:
    while True:
        value = make()
        if valid(value):
            return value


def group(s: str, sizes: list[int], sep: str) -> str:
    out, i = [], 0
    for size in sizes:
        out.append(s[i : i + size])
        i += size
    if i < len(s):
        out.append(s[i:])
    return sep.join(out)


# --- values -----------------------------------------------------------------------------------


def card_number() -> str:
    prefix, length = R.choice(
        [("4", 16), ("51", 16), ("55", 16), ("2221", 16), ("37", 15), ("6011", 16), ("35", 16)]
    )
    if prefix == "35":
        prefix = "35" + str(R.randint(28, 89))
    body = prefix + digits(length - len(prefix) - 1)
    return body + luhn.calc_check_digit(body)


def iban_number() -> str:
    country, bban = R.choice(
        [
            ("DE", lambda: digits(18)),
            ("GB", lambda: "NWBK" + digits(14)),
            ("FR", lambda: digits(23)),
            ("NL", lambda: "ABNA" + digits(10)),
            ("ES", lambda: digits(20)),
            ("IT", lambda: "X" + digits(22)),
            ("BE", lambda: digits(12)),
            ("CH", lambda: digits(17)),
        ]
    )
    b = bban()
    value = country + mod_97_10.calc_check_digits(b + country) + b
    return value if std_iban.is_valid(value) else iban_number()


ID_KINDS = ("ssn", "itin", "nino", "idnr", "nir", "dni", "nie", "cf", "bsn", "aadhaar", "pan",
            "sin", "tfn", "cpf", "passport")  # fmt: skip


def national_id(kind: str) -> str:
    """A sentence with a valid id of this kind and the words people write near it."""
    if kind == "ssn":
        v = until(ssn.is_valid, lambda: f"{R.randint(1, 665):03d}-{R.randint(1, 99):02d}-"
                  f"{R.randint(1, 9999):04d}")
        v = v.replace("-", " ") if R.random() < 0.3 else v  # as some forms print it
        return R.choice([f"My SSN is {v}.", f"social security number: {v}", f"SSN {v}"])
    if kind == "itin":
        v = until(itin.is_valid, lambda: f"9{digits(2)}-{R.randint(70, 88)}-{digits(4)}")
        v = v.replace("-", " ") if R.random() < 0.3 else v
        return f"my ITIN is {v}"
    if kind == "nino":
        v = R.choice("ABCEGHJKLMNPRSTWXYZ") + R.choice("ABCEGHJKLMNPRSTWXYZ") + digits(6) + \
            R.choice("ABCD")
        if v[:2] in ("GB", "NK", "TN", "ZZ", "BG", "KN", "NT"):
            v = "AB" + v[2:]
        spaced = R.random() < 0.5
        w = f"{v[:2]} {v[2:4]} {v[4:6]} {v[6:8]} {v[8]}" if spaced else v
        return R.choice([f"My NI number is {w}", f"National Insurance number: {w}"])
    if kind == "idnr":
        v = until(idnr.is_valid, lambda: str(R.randint(1, 9)) + digits(10))
        return R.choice([f"Meine Steuer-ID ist {v}", f"my German tax id: {v}"])
    if kind == "nir":
        def make() -> str:
            body = R.choice("12") + digits(2) + f"{R.randint(1, 12):02d}" + digits(8)
            return body + f"{97 - int(body) % 97:02d}"
        v = until(nir.is_valid, make)
        return f"numéro de sécurité sociale {group(v, [1, 2, 2, 2, 3, 3], ' ')}"
    if kind == "dni":
        n = digits(8)
        v = n + "TRWAGMYFPDXBNJZSQVHLCKE"[int(n) % 23]
        return R.choice([f"mi DNI es {v}", f"DNI: {v}"])
    if kind == "nie":
        v = until(nie.is_valid, lambda: R.choice("XYZ") + digits(7) + R.choice(string.ascii_uppercase))
        return f"NIE {v}"
    if kind == "cf":
        body = "".join(R.choice(string.ascii_uppercase) for _ in range(6)) + digits(2) + \
            R.choice("ABCDEHLMPRST") + f"{R.randint(1, 28):02d}" + R.choice("ABCDEFGHLM") + digits(3)
        v = body + codicefiscale.calc_check_digit(body)
        return f"il mio codice fiscale è {v}"
    if kind == "bsn":
        v = until(bsn.is_valid, lambda: digits(9))
        return R.choice([f"mijn BSN is {v}", f"BSN: {v}"])
    if kind == "aadhaar":
        b = str(R.randint(2, 9)) + digits(10)
        v = b + verhoeff.calc_check_digit(b)
        return f"Aadhaar {group(v, [4, 4, 4], ' ')}"
    if kind == "pan":
        v = "".join(R.choice(string.ascii_uppercase) for _ in range(3)) + R.choice("PCHFAT") + \
            R.choice(string.ascii_uppercase) + digits(4) + R.choice(string.ascii_uppercase)
        return f"my PAN is {v}"
    if kind == "sin":
        b = str(R.randint(1, 7)) + digits(7)
        v = b + luhn.calc_check_digit(b)
        return f"SIN: {group(v, [3, 3, 3], ' ')}"
    if kind == "tfn":
        v = until(tfn.is_valid, lambda: digits(9))
        return f"my tax file number (TFN) is {group(v, [3, 3, 3], ' ')}"
    if kind == "cpf":
        b = digits(9)
        v = b + cpf._calc_check_digits(b)
        return f"CPF {v[:3]}.{v[3:6]}.{v[6:9]}-{v[9:]}"
    v = R.choice(string.ascii_uppercase) + digits(8)
    return R.choice([f"passport number {v}", f"my passport: {v}"])


TOKEN_KINDS = ("aws_akia", "aws_asia", "aws_secret", "google", "stripe_sk", "stripe_rk",
               "github_ghp", "github_gho", "github_ghs", "gitlab", "npm", "pypi", "hf", "slack",
               "twilio", "sendgrid", "openai", "anthropic", "jwt", "azure", "azure_sas",
               "azure_shared_key", "azure_client_secret")  # fmt: skip


def token(kind: str) -> str:
    """A sentence with a live-looking token of this kind."""
    alnum = string.ascii_letters + string.digits

    def rnd(n: int, chars: str = alnum) -> str:
        return "".join(R.choice(chars) for _ in range(n))

    up = string.ascii_uppercase + string.digits
    value = {
        "aws_akia": lambda: "AKIA" + rnd(16, up),
        "aws_asia": lambda: "ASIA" + rnd(16, up),
        "aws_secret": lambda: rnd(40, alnum + "/+"),
        "google": lambda: "AIza" + rnd(35, alnum + "_-"),
        "stripe_sk": lambda: "sk_live_" + rnd(24),
        "stripe_rk": lambda: "rk_live_" + rnd(24),
        "github_ghp": lambda: "ghp_" + rnd(36),
        "github_gho": lambda: "gho_" + rnd(36),
        "github_ghs": lambda: "ghs_" + rnd(36),
        "gitlab": lambda: "glpat-" + rnd(20, alnum + "_-"),
        "npm": lambda: "npm_" + rnd(36),
        "pypi": lambda: "pypi-AgEIcHlwaS5vcmc" + rnd(50, alnum + "_-"),
        "hf": lambda: "hf_" + rnd(34),
        "slack": lambda: f"xoxb-{digits(12)}-{digits(12)}-{rnd(24)}",
        "twilio": lambda: "SK" + rnd(32, "0123456789abcdef"),
        "sendgrid": lambda: f"SG.{rnd(22, alnum + '_-')}.{rnd(43, alnum + '_-')}",
        "openai": lambda: "sk-proj-" + rnd(40, alnum + "_-"),
        "anthropic": lambda: "sk-ant-api03-" + rnd(60, alnum + "_-"),
        "jwt": lambda: "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ" + rnd(30, alnum + "_-") + "."
        + rnd(43, alnum + "_-"),
        "azure": lambda: rnd(86, alnum + "+/") + "==",
        "azure_sas": lambda: quote(base64.b64encode(R.randbytes(32)).decode(), safe=""),
        "azure_shared_key": lambda: rnd(43, alnum + "+/") + "=",
        "azure_client_secret": lambda: rnd(3, alnum + "_~.") + digits(1) + "Q~"
        + rnd(34, alnum + "_~.-"),
    }[kind]()
    if kind == "aws_secret":
        return f"aws_secret_access_key = {value}"
    if kind == "azure":
        return (f"DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={value};"
                "EndpointSuffix=core.windows.net")
    if kind == "azure_sas":
        return ("https://acme.blob.core.windows.net/backups/db.bak?sv=2022-11-02&ss=b&srt=o&sp=r"
                f"&se=2026-03-01T00:00:00Z&spr=https&sig={value}")
    if kind == "azure_shared_key":
        return ("Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=Root;"
                f"SharedAccessKey={value}")
    return R.choice(
        [f"Why does {value} fail?", f"export TOKEN={value}", f"my key is {value}",
         f"here: {value}", f"config: api_key: {value}"]
    )  # fmt: skip


PEM_KINDS = ("RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY", "OPENSSH PRIVATE KEY",
             "ENCRYPTED PRIVATE KEY", "PGP PRIVATE KEY BLOCK", "DSA PRIVATE KEY")


def pem(k: str) -> str:
    body = "".join(R.choice(string.ascii_letters + string.digits + "+/") for _ in range(64))
    return f"-----BEGIN {k}-----\n{body}\n-----END {k}-----"


def password() -> str:
    pw = R.choice(["sunshine42", "Tr0ub4dor&3", "correct-horse-battery", "hunter2!", "P@ssw0rd99",
                   "qwerty7788", "Bl4ckC4t", "zebra-Orange-19", "letmein2024", "Wint3rIsHere"])
    return R.choice(
        [f"the wifi password is {pw}", f"My password is {pw}, can you check it is strong?",
         f"login: jdoe / {pw}", f"username jdoe password {pw}", f"password={pw}",
         f"DB_PASSWORD: {pw}", f"mein Passwort ist {pw}", f"le mot de passe est {pw}",
         f"my PIN is {digits(4)}", f'passwd = "{pw}"', f"user: admin, pass: {pw}"]
    )  # fmt: skip


def credential_url() -> str:
    scheme = R.choice(["postgres", "postgresql", "mysql", "mongodb+srv", "redis", "amqp", "https"])
    host = R.choice(["db.internal", "10.0.3.7:5432", "cluster0.ab1cd.mongodb.net", "mq.local.lan"])
    pw = R.choice(["s3cr3tP4ss", "hunter2", "Xk9#pq", "admin123", "r4bbit!mq"])
    return f"connect to {scheme}://app_user:{pw}@{host}/main and tell me why it times out"


def email() -> str:
    user = R.choice(["jane.doe", "tom_becker", "ana.garcia83", "l.rossi", "sanne+news", "priya"])
    domain = R.choice(["gmail.com", "fastmail.fm", "proton.me", "outlook.de", "uni-bonn.de",
                       "acme-corp.co.uk", "web.de"])
    style = R.random()
    if style < 0.15:
        return f"mail me: {user.replace('.', ' dot ')} at {domain.replace('.', ' dot ')}"
    if style < 0.25:
        return f"write to {user} (at) {domain.replace('.', ' (dot) ')}"
    if style < 0.35:
        return f"my address is {user}＠{domain}"
    return R.choice([f"My email is {user}@{domain}.", f"cc {user}@{domain} please",
                     f"<{user}@{domain}>"])


def phone() -> str:
    number = R.choice(
        [f"({R.randint(201, 989)}) {R.randint(201, 989)}-{digits(4)}",
         f"+1 415 {R.randint(201, 989)} {digits(4)}",
         f"+44 20 7{digits(3)} {digits(4)}", f"+44 7{R.randint(400, 999)} {digits(6)}",
         f"020 7{digits(3)} {digits(4)}", f"07{R.randint(400, 999)} {digits(6)}",
         f"+49 30 {digits(7)}", f"030 {digits(7)}", f"+33 6 {digits(2)} {digits(2)} {digits(2)} {digits(2)}",
         f"06 {digits(2)} {digits(2)} {digits(2)} {digits(2)}", f"+34 6{digits(2)} {digits(3)} {digits(3)}",
         f"+39 3{digits(2)} {digits(7)}", f"+31 6 {digits(8)}",
         f"{R.randint(201, 989)}.{R.randint(201, 989)}.{digits(4)}"]
    )  # fmt: skip
    return R.choice([f"call me on {number}", f"my number is {number}", f"Tel: {number}",
                     f"ring {number} after six"])


def address() -> str:
    return R.choice(
        [f"I live at {R.randint(1, 999)} {R.choice(['Baker', 'Oak', 'Maple', 'Elm', 'High'])} "
         f"{R.choice(['Street', 'Road', 'Avenue', 'Lane', 'Drive'])}, Springfield",
         f"send it to {R.choice(['Hauptstraße', 'Bahnhofstrasse', 'Gartenweg', 'Lindenallee'])} "
         f"{R.randint(1, 99)}, {R.randint(10000, 99999)} Berlin",
         f"j'habite au {R.randint(1, 99)} rue {R.choice(['de la Paix', 'Victor Hugo', 'du Bac'])}, Paris",
         f"vivo en Calle {R.choice(['Mayor', 'Alcalá', 'Serrano'])} {R.randint(1, 99)}, Madrid",
         f"abito in Via {R.choice(['Roma', 'Garibaldi', 'Dante'])} {R.randint(1, 99)}, Milano",
         f"ik woon op de {R.choice(['Kerkstraat', 'Dorpsweg', 'Parklaan'])} {R.randint(1, 99)}, Utrecht",
         f"my address: Flat 2, {R.randint(1, 99)} Gower Street, London WC1E 6BT",
         "ship to 1600 Pennsylvania Avenue, Washington, DC 20500"]
    )  # fmt: skip


MONTHS = ["January", "March", "May", "July", "October", "December"]


def birth_date() -> str:
    d, m, y = R.randint(1, 28), R.randint(1, 12), R.randint(1940, 2015)
    return R.choice(
        [f"My date of birth is {d:02d}/{m:02d}/{y}", f"DOB: {y}-{m:02d}-{d:02d}",
         f"I was born on {d} {R.choice(MONTHS)} {y}", f"my son was born on {R.choice(MONTHS)} {d}, {y}",
         f"Geburtsdatum: {d:02d}.{m:02d}.{y}", f"date de naissance : {d:02d}/{m:02d}/{y}"]
    )  # fmt: skip


def sensitive() -> str:
    return R.choice(
        ["I was diagnosed with type 2 diabetes last spring", "my son has autism",
         "My wife is pregnant and we have not told anyone", "I take sertraline 50 mg every morning",
         "I'm HIV positive and starting a new job", "my mother suffers from dementia",
         "I have been diagnosed with bipolar disorder", "I am gay and my parents do not know",
         "my daughter has epilepsy", "I'm on 20mg fluoxetine", "I have asthma",
         "my husband was diagnosed with cancer", "I'm a member of the union at work",
         "ich habe Diabetes", "je suis enceinte", "I have been living with depression for years"]
    )  # fmt: skip


# --- look-alikes ------------------------------------------------------------------------------


def lookalike(kind: str) -> str:
    if kind == "email":
        return R.choice(
            ["write to user@example.com", "contact name@domain.tld", "user@example.invalid",
             "admin@localhost.localdomain.test", "ping jane@corp.example", "an @mention on X",
             "email me at you@yourdomain.com", "see docs at foo@bar.test", "meet at noon dot"]
        )  # fmt: skip
    if kind == "phone":
        return R.choice(
            [f"call 555-01{R.randint(0, 99):02d}", f"(202) 555-01{R.randint(0, 99):02d}",
             f"020 7946 0{digits(3)}", f"07700 900{digits(3)}", "tel 555-1234",
             f"order {R.randint(10**6, 10**7)}", "the year 2024 had 366 days",
             f"score {R.randint(1, 99)}-{R.randint(1, 99)}", "version 10.2.3.4"]
        )  # fmt: skip
    if kind == "card":
        n = card_number()
        bad = n[:-1] + str((int(n[-1]) + 1) % 10)
        isbn = "978" + digits(9)
        isbn += str((10 - sum((1 if i % 2 == 0 else 3) * int(c) for i, c in enumerate(isbn)) % 10) % 10)
        return R.choice(
            [f"card {group(bad, [4, 4, 4, 4], ' ')}", f"ISBN {isbn}",
             f"isbn {isbn[:3]}-{isbn[3]}-{isbn[4:7]}-{isbn[7:12]}-{isbn[12]}",
             f"EAN {isbn}", "1234567812345678", f"tracking {digits(16)}0"[:30]]
        )  # fmt: skip
    if kind == "iban":
        v = iban_number()
        bad = v[:2] + f"{(int(v[2:4]) + 1) % 100:02d}" + v[4:]
        return R.choice([f"pay to {bad}", "IBAN: DE00 0000 0000 0000 0000 00",
                         "format is CCkk BBBB BBBB ..."])
    if kind == "national_id":
        return R.choice(
            ["SSN 000-12-3456", "my SSN is 123-45-6789", "order number 123456789",
             f"ref {digits(9)}", "NI number QQ 12 34 56 C", "the DNI format is 8 digits",
             f"invoice {digits(11)}", f"BSN {until(lambda x: not bsn.is_valid(x), lambda: digits(9))}",
             "room AB123456C", f"ticket {digits(12)}"]
        )  # fmt: skip
    if kind == "api_token":
        return R.choice(
            ["set OPENAI_API_KEY=sk-...", "api_key = YOUR_API_KEY", "aws AKIAIOSFODNN7EXAMPLE",
             "token: <your-token-here>", "export GITHUB_TOKEN=ghp_xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
             "id 123e4567-e89b-12d3-a456-426614174000",
             f"commit {''.join(R.choice('0123456789abcdef') for _ in range(40))}",
             "pip install scikit-learn==1.5.2", "timestamp 2024-01-15T10:30:00.123Z",
             "sk_live_xxxxxxxxxxxxxxxxxxxxxxxx", "Bearer ${TOKEN}",
             f"sha256 {''.join(R.choice('0123456789abcdef') for _ in range(64))}",
             "the path /usr/local/lib/python3.11/site-packages/numpy"]
        )  # fmt: skip
    if kind == "private_key":
        return R.choice(
            ["-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
             "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----",
             "where should I store my private key?", "ssh-keygen writes id_ed25519.pub"]
        )  # fmt: skip
    if kind == "password":
        return R.choice(
            ["the password is required", "my password is too long for the form",
             "password: ********", "reset your password here", "password=<your password>",
             "Password is incorrect, try again", "what makes a password strong?",
             "DB_PASSWORD=${DB_PASSWORD}", "the login page is slow", "my PIN is wrong"]
        )  # fmt: skip
    if kind == "credential_url":
        return R.choice(
            ["connect to postgres://app@db.internal/main", "https://github.com/user/repo",
             "postgres://user:<password>@host/db", "redis://localhost:6379/0",
             "mysql://root:${MYSQL_PASSWORD}@db/app", "see https://docs.python.org/3/"]
        )  # fmt: skip
    if kind == "address":
        return R.choice(
            ["Street Fighter 2 is a classic", "I live in a big city", "the 3 roads meet here",
             "take road 66 west", "I walked down the street for 20 minutes",
             "Apollo 11 landed in 1969", "the API lives at /v1/users/42",
             "Windows 11 place holder", "We sold 12 Apples and 40 Pears"]
        )  # fmt: skip
    if kind == "birth_date":
        return R.choice(
            ["Mozart was born on 27 January 1756", "the meeting is on 2024-01-15 at 10:30",
             "Einstein was born in 1879", "release date: 12/03/2021", "born to run",
             "the birth rate in 2020 was low", f"invoice date {R.randint(1, 28):02d}.05.2023"]
        )  # fmt: skip
    return R.choice(
        ["What are the symptoms of diabetes?", "How is asthma treated in children?",
         "Explain how HIV attacks the immune system.", "What is the usual dose of ibuprofen?",
         "Is depression more common in winter?", "Write a story about a doctor who cures cancer.",
         "What does autism spectrum mean?", "Which union represents teachers in France?"]
    )  # fmt: skip


# --- rows --------------------------------------------------------------------------------------

# Families whose rows go round-robin over every sub-kind (recorded in the row's "sub"): drawn at
# random, a few hundred rows left some out (no Aadhaar, no JWT, no AWS ASIA key).
SUBKINDS: dict[str, tuple[str, ...]] = {
    "national_id": ID_KINDS,
    "api_token": TOKEN_KINDS,
    "private_key": PEM_KINDS,
}
MAKERS: dict[str, Callable[[], str]] = {
    "email": email,
    "phone": phone,
    "card": lambda: R.choice(["my card is ", "card: ", "charge ", "Visa "]) + group(
        card_number(), [4, 4, 4, 4], R.choice([" ", "-", ".", "", "\u00a0", "\u2013", "/"])
    ),
    "iban": lambda: R.choice(["pay to ", "IBAN: ", "my account "]) + (
        lambda v: group(v, [4] * 8, " ") if R.random() < 0.6 else v
    )(iban_number()),
    "password": password,
    "credential_url": credential_url,
    "address": address,
    "birth_date": birth_date,
    "sensitive": sensitive,
}
SUB_MAKERS: dict[str, Callable[[str], str]] = {
    "national_id": national_id,
    "api_token": token,
    "private_key": pem,
}
FAMILIES = ("email", "phone", "card", "iban", "national_id", "api_token", "private_key",
            "password", "credential_url", "address", "birth_date", "sensitive")  # fmt: skip
ZW = "\u200b"


def unicode_variant(text: str) -> tuple[str, str]:
    """The same text as pasted from somewhere else."""
    how = R.choice(["nbsp", "fullwidth", "zero-width", "en-dash", "decomposed"])
    if how == "decomposed":  # accents as separate marks, as macOS pastes them
        return unicodedata.normalize("NFD", text), how
    if how == "nbsp":
        return text.replace(" ", "\u00a0"), how
    if how == "fullwidth":
        return "".join(chr(ord(c) + 0xFEE0) if c.isdigit() or c == "@" else c for c in text), how
    if how == "zero-width":
        return "".join(c + ZW if c.isdigit() and R.random() < 0.3 else c for c in text), how
    return text.replace("-", "\u2013"), how


def row(kind: str, text: str, private: bool, case: str, sub: str = "") -> dict[str, object]:
    where = R.choice(["last", "last", "earlier", "system"])
    q = R.choice(QUESTIONS)
    if where == "last":
        messages = [{"role": "user", "content": f"{text}\n{q}"}]
    elif where == "earlier":
        messages = [
            {"role": "user", "content": text},
            {"role": "assistant", "content": "Noted. How can I help?"},
            {"role": "user", "content": q},
        ]
    else:
        messages = [
            {"role": "system", "content": f"You assist {R.choice(NAMES)}. Context: {text}"},
            {"role": "user", "content": q},
        ]
    out: dict[str, object] = {"messages": messages, "private": private, "kind": kind}
    if sub:
        out["sub"] = sub
    out["case"] = f"{case} ({where})"
    return out


def build(per_kind: int = 44) -> list[dict[str, object]]:
    rows = []
    for kind in FAMILIES:
        subs = SUBKINDS.get(kind, ("",))
        for i in range(per_kind):
            sub = subs[i % len(subs)]
            text, case = (SUB_MAKERS[kind](sub) if sub else MAKERS[kind]()), "plain"
            if i % 4 == 3:
                text, case = unicode_variant(text)
            rows.append(row(kind, text, True, case, sub))
            rows.append(row(kind, lookalike(kind), False, "look-alike"))
    return rows


def main() -> int:
    rows = build()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(f"{len(rows)} cases → {OUT}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
