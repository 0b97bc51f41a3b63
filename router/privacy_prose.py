"""Personal data written in words: e-mail addresses (also "jane at example dot org"), street
addresses in English, German, French, Spanish, Italian and Dutch (a house number with a street
word, or a postal code with a city), dates of birth (a date with birth context), and health and
other special categories of personal data (GDPR art. 9) said about oneself or one's family.

Offline rules, no model: each family is gated on a cheap substring ("@", a street word, "born",
a condition word) and its regexes run only when the gate opens. A general question ("what are
the symptoms of diabetes?") is not about anyone: the health rules need "I", "my …" or a family
member as the subject.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from router.privacy_text import Hit, ScanText

__all__ = ["find_prose"]

# --- e-mail -----------------------------------------------------------------------------------
_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
_AT, _DOT = (
    r"(?:\s*[\[({<]\s*at\s*[\])}>]\s*|\s+at\s+)",
    r"(?:\s*[\[({<]\s*dot\s*[\])}>]\s*|\s+dot\s+)",
)
_OBFUSCATED = re.compile(
    rf"(?i)(?<![\w.])[a-z0-9._%+-]+(?:{_DOT}[a-z0-9_%+-]+)*{_AT}[a-z0-9-]+"
    rf"(?:(?:{_DOT}|\.)[a-z0-9-]+)*(?:{_DOT})(?:com|org|net|edu|gov|io|co|uk|de|fr|es|it|nl|"
    rf"eu|ch|at|be|ca|au|in|br|info|me|us)\b"
)
# RFC 2606 / 6761 names and the placeholders documentation uses.
_RESERVED_TLDS = ("test", "example", "invalid", "localhost", "local", "tld")
_RESERVED_DOMAINS = (
    "example.com", "example.net", "example.org", "example.edu", "domain.com", "yourdomain.com",
    "your-domain.com", "mydomain.com", "company.com", "yourcompany.com",
)  # fmt: skip


def _reserved(domain: str) -> bool:
    d = domain.lower().rstrip(".")
    if d.rsplit(".", 1)[-1] in _RESERVED_TLDS:
        return True
    return any(d == r or d.endswith("." + r) for r in _RESERVED_DOMAINS)


def _emails(t: ScanText) -> Iterator[Hit]:
    text = t.text
    i = text.find("@")
    while i >= 0:
        m = next(
            (m for m in _EMAIL.finditer(text, max(0, i - 64), i + 256) if m.start() <= i < m.end()),
            None,
        )
        if m is None:
            i = text.find("@", i + 1)
            continue
        # user:password@host in a URL is not an address (credential_url covers it)
        in_url = m.start() > 0 and (
            text[m.start() - 1] == ":" or text.endswith("://", 0, m.start())
        )
        if not in_url and not _reserved(m.group().rsplit("@", 1)[1]):
            yield Hit("email", m.start(), m.end(), "")
        i = text.find("@", m.end())
    if "dot" in t.words and "at" in t.words:
        for m in _OBFUSCATED.finditer(text):
            domain = re.sub(
                _DOT, ".", re.split(_AT, m.group(), maxsplit=1, flags=re.I)[-1], flags=re.I
            )
            if not _reserved(domain):
                yield Hit("email", m.start(), m.end(), "written out")


# --- street addresses -------------------------------------------------------------------------
_CAP = r"[A-ZÀ-ÝÄÖÜ][\w'’.-]*"
_STREETS_EN = (
    r"(?i:street|st|road|rd|avenue|ave|lane|ln|drive|dr|boulevard|blvd|way|court|ct|place|pl|"
    r"terrace|crescent|close|square|sq|highway|hwy|parkway|pkwy|row|mews|gardens|grove)"
)
_ADDRESS = re.compile(
    "|".join(
        (
            # EN: 221B Baker Street, 1600 Pennsylvania Avenue NW
            rf"(?<![\w.,])\d{{1,5}}[A-Za-z]?,?\s+(?:{_CAP}\s+){{1,3}}{_STREETS_EN}\b\.?",
            # FR: 12 bis rue de la Paix
            r"(?<![\w.,])\d{1,4}(?:\s?(?:bis|ter))?,?\s+(?i:rue|avenue|av\.|boulevard|bd|place|"
            r"chemin|allée|allee|impasse|quai|route|cours)\s+(?:(?:de|du|des|la|le|l'|d')\s*)*"
            + _CAP,
            # ES: Calle Mayor 3, c/ Mayor, 3; IT: Via Roma 10, Piazza Navona, 5
            r"(?<!\w)(?:[Cc]alle|[Cc]/|[Aa]venida|[Aa]vda\.?|[Pp]laza|[Pp]aseo|[Cc]amino|"
            r"[Cc]arrer|[Vv]ia|[Vv]iale|[Pp]iazza|[Cc]orso|[Vv]icolo|[Ll]argo|[Pp]iazzale)\s+"
            r"(?:(?:de|del|la|los|las|dei|della|delle|di|degli)\s+)*"
            + _CAP
            + r"(?:\s+"
            + _CAP
            + r")*,?\s*(?:n[º°o.]\s*)?\d{1,4}\b",
            # DE/NL: Hauptstraße 5, Kerkstraat 12a, Am Markt 3 is left out (no street word)
            r"(?<!\w)[A-ZÄÖÜ][\wäöüß-]*(?:straße|strasse|str\.|weg|gasse|platz|allee|damm|"
            r"ufer|ring|straat|laan|plein|gracht|kade|singel|dijk|steeg)\s*\d{1,4}\s?[a-zA-Z]?\b",
            r"(?<!\w)[A-ZÄÖÜ][\wäöüß-]*\s(?:Straße|Strasse|Str\.|Weg|Gasse|Platz|Allee)\s*"
            r"\d{1,4}\s?[a-zA-Z]?\b",
        )
    )
)
_STREET_WORDS = frozenset(
    [
        "street",
        "st",
        "road",
        "rd",
        "avenue",
        "ave",
        "lane",
        "ln",
        "drive",
        "dr",
        "boulevard",
        "blvd",
        "way",
        "court",
        "ct",
        "place",
        "pl",
        "terrace",
        "crescent",
        "close",
        "square",
        "sq",
        "highway",
        "hwy",
        "parkway",
        "pkwy",
        "row",
        "mews",
        "gardens",
        "grove",
        "rue",
        "av",
        "bd",
        "chemin",
        "allée",
        "allee",
        "impasse",
        "quai",
        "route",
        "cours",
        "calle",
        "c",
        "avenida",
        "avda",
        "plaza",
        "paseo",
        "camino",
        "carrer",
        "via",
        "viale",
        "piazza",
        "corso",
        "vicolo",
        "largo",
        "piazzale",
        "straße",
        "strasse",
        "str",
        "weg",
        "gasse",
        "platz",
        "allee",
        "straat",
        "laan",
        "plein",
        "gracht",
        "kade",
        "singel",
        "dijk",
        "steeg",
    ]
)
# Compounds ("Hauptstraße", "Kerkstraat") are one word: their endings find them.
_STREET_SUFFIXES = (
    "straße", "strasse", "str", "weg", "gasse", "platz", "allee", "damm", "ufer", "ring",
    "straat", "laan", "plein", "gracht", "kade", "singel", "dijk", "steeg",
)  # fmt: skip
# A postal code with a city: UK postcodes, US "City, ST 12345", five-digit codes before a city
# (DE, FR, ES, IT), Dutch "1012 AB Amsterdam". Only with a word that makes it an address.
_POSTAL = re.compile(
    r"\b[A-Z]{1,2}\d[A-Z\d]? ?\d[A-Z]{2}\b"
    r"|\b[A-Z][a-z]+(?: [A-Z][a-z]+)*, [A-Z]{2} \d{5}(?:-\d{4})?\b"
    r"|(?<![\d.,-])\d{5} [A-ZÀ-ÝÄÖÜ][a-zà-ÿäöüß]+(?:[ -][A-ZÀ-Ý][a-zà-ÿ]+)?"
    r"|\b\d{4} ?[A-Z]{2} [A-Z][a-z]+"
)
_POSTAL_SHAPES = ("0 0AA", ", AA 00000", "00000 A", "0000 AA A", "0000AA A")
_ADDRESS_WORDS = (
    "live", "address", "adresse", "addr", "ship", "deliver", "send it to", "post", "home",
    "wohne", "wohnhaft", "habite", "vivo", "abito", "woon", "dirección", "direccion",
    "indirizzo", "adres", "located", "moved to", "zip", "postcode", "plz",
)  # fmt: skip
_ADDRESS_SET = frozenset(w.split()[0] for w in _ADDRESS_WORDS) | {
    "lives",
    "living",
    "addresses",
    "shipping",
    "delivery",
    "deliveries",
    "posted",
    "postal",
}


# A capitalised word right before a number ("Hauptstraße 5"), on the shape view.
_CAPITAL_THEN_NUMBER = re.compile(r"A[^\s0]{3,} ?0")


def _compound_street(t: ScanText) -> bool:
    """A street written as one word ("Hauptstraße 5", "Kerkstraat 12")."""
    for m in _CAPITAL_THEN_NUMBER.finditer(t.shape):
        word = t.low[m.start() : m.end()].split()[0].rstrip("0123456789")
        if word.endswith(_STREET_SUFFIXES):
            return True
    return False


def _addresses(t: ScanText) -> Iterator[Hit]:
    shape, low, words = t.shape, t.low, t.words
    if "0" not in shape:
        return
    if not _STREET_WORDS.isdisjoint(words) or _compound_street(t):
        for m in _ADDRESS.finditer(t.text):
            yield Hit("address", m.start(), m.end(), "")
    if not _ADDRESS_SET.isdisjoint(words) and any(s in shape for s in _POSTAL_SHAPES):
        for m in _POSTAL.finditer(t.text):
            window = low[max(0, m.start() - 80) : m.start()]
            if any(w in window for w in _ADDRESS_WORDS):
                yield Hit("address", m.start(), m.end(), "postal code and city")


# --- dates of birth -------------------------------------------------------------------------
_MONTHS = (
    r"(?:jan(?:uary|uar|vier)?|feb(?:ruary|ruar)?|févr(?:ier)?|fevrier|mar(?:ch|s)?|märz|"
    r"apr(?:il)?|avril|may|mai|june?|juin|juni|july?|juillet|juli|aug(?:ust)?|août|aout|"
    r"sep(?:t(?:ember)?)?|septembre|oct(?:ober)?|octobre|okt(?:ober)?|nov(?:ember)?|novembre|"
    r"dec(?:ember)?|dez(?:ember)?|décembre|enero|febrero|marzo|abril|mayo|junio|julio|agosto|"
    r"septiembre|octubre|noviembre|diciembre|gennaio|febbraio|aprile|maggio|giugno|luglio|"
    r"settembre|ottobre|dicembre|januari|februari|maart|mei|augustus|oktober)\.?"
)
_DATE = re.compile(
    r"(?i)(?<!\d)(?:\d{1,2}[./-]\d{1,2}[./-](?:19|20)\d\d|(?:19|20)\d\d-\d\d-\d\d"
    rf"|\d{{1,2}}(?:st|nd|rd|th|er|º)?\.?\s+(?:de\s+)?{_MONTHS}\s+(?:de\s+)?(?:19|20)\d\d"
    rf"|{_MONTHS}\s+\d{{1,2}}(?:st|nd|rd|th)?,?\s+(?:19|20)\d\d)(?!\d)"
)
# A form field says whose date it is; "born" needs a person close by, not a composer.
_BIRTH_FIELDS = (
    "dob", "d.o.b", "date of birth", "birth date", "birthdate", "geburtsdatum", "geb.",
    "date de naissance", "fecha de nacimiento", "data di nascita", "geboortedatum",
)  # fmt: skip
_BIRTH_WORDS = (
    "born", "birthday", "geboren", "né le", "née le", "né en", "nacido", "nacida", "nato il",
    "nata il", "nato a", "nata a", "jarig", "geburtstag", "anniversaire", "cumpleaños",
    "compleanno",
)  # fmt: skip
_PERSONAL = re.compile(
    r"(?i)\b(?:i|i'm|i am|my|me|we|our|son|daughter|wife|husband|mother|mom|mum|father|dad|"
    r"child|baby|brother|sister|partner|patient|grandson|granddaughter|ich|mein|meine|meiner|"
    r"je|mon|ma|mes|yo|mi|mis|io|mio|mia|ik|mijn|sohn|tochter|fils|fille|hijo|hija|figlio|"
    r"figlia|zoon|dochter)\b"
)


_BIRTH_GATE = frozenset(
    [
        "dob",
        "d",
        "birth",
        "birthdate",
        "birthday",
        "born",
        "geburtsdatum",
        "geb",
        "naissance",
        "nacimiento",
        "nascita",
        "geboortedatum",
        "geboren",
        "né",
        "née",
        "nacido",
        "nacida",
        "nato",
        "nata",
        "jarig",
        "geburtstag",
        "anniversaire",
        "cumpleaños",
        "compleanno",
    ]
)


def _birth_dates(t: ScanText) -> Iterator[Hit]:
    if _BIRTH_GATE.isdisjoint(t.words):
        return
    low = t.low
    fields = [w for w in _BIRTH_FIELDS if w in low]
    words = [w for w in _BIRTH_WORDS if w in low]
    if not fields and not words:
        return
    for m in _DATE.finditer(t.text):
        before = low[max(0, m.start() - 48) : m.start()]
        if any(w in before for w in fields) or (
            any(w in before for w in words)
            and _PERSONAL.search(t.text, max(0, m.start() - 64), m.start())
        ):
            yield Hit("birth_date", m.start(), m.end(), "")


# --- health and other special categories ------------------------------------------------------
_CONDITIONS = (
    r"(?:type [12] )?diabetes|cancer|leukemia|leukaemia|lymphoma|melanoma|tumou?r|hiv|aids|"
    r"hepatitis(?: [abc])?|depression|anxiety(?: disorder)?|bipolar(?: disorder)?|"
    r"schizophrenia|adhd|autism|asthma|epilepsy|dementia|alzheimer'?s|parkinson'?s|"
    r"multiple sclerosis|crohn'?s(?: disease)?|copd|ptsd|ocd|anorexia|bulimia|an eating disorder|"
    r"chlamydia|herpes|syphilis|gonorrh(?:o)?ea|an std|an sti|long covid|covid(?:-19)?|"
    r"a stroke|a heart attack|heart failure|arthritis|lupus|psoriasis|migraines?|insomnia|"
    r"an addiction|alcoholism|a brain tumou?r|celiac disease|coeliac disease|endometriosis|"
    r"hypertension|high blood pressure|kidney disease|cystic fibrosis|down syndrome|"
    r"a miscarriage|an abortion|infertility|diabète|krebs|diabetes mellitus|depressionen"
)
_SUBJECT = (
    r"(?:i|i'm|i've|i am|i was|i have|me|we|my (?:\w+ )?(?:son|daughter|wife|husband|mother|"
    r"mom|mum|father|dad|child|kid|baby|brother|sister|partner|girlfriend|boyfriend|"
    r"grandmother|grandfather|grandma|grandpa|aunt|uncle|cousin|friend|colleague|family)|"
    r"our (?:son|daughter|child|baby|kid))"
)
_SENSITIVE = re.compile(
    r"(?i)\b(?:"
    # explicit medical phrases about someone
    rf"{_SUBJECT}\b[^.?!\n]{{0,40}}?\b(?:diagnosed with|been diagnosed|tested positive for|"
    r"suffers? from|suffering from|living with|being treated for|in remission from|"
    r"allergic to|an allergy to|"
    rf"prescribed|on chemo|recovering from)\b[^.?!\n]{{0,40}}"
    # "I have diabetes", "my son has autism", "my wife is pregnant"
    rf"|{_SUBJECT}\s+(?:has|have|had|got|has got|'ve got|is|am|was|'m)\s+(?:been\s+)?"
    rf"(?:(?:severe|mild|chronic|early|late|stage \w+|terminal|an?)\s+)?(?:{_CONDITIONS}|"
    r"pregnant|hiv[- ]positive|bipolar|autistic|diabetic|epileptic|depressed|suicidal|"
    r"infertile)\b"
    # "my anxiety is getting worse", "my therapist", "our son's autism"
    rf"|(?:my|our|my (?:\w+)'s|our (?:\w+)'s)\s+(?:{_CONDITIONS}|therapist|psychiatrist|"
    r"oncologist|chemo(?:therapy)?|diagnosis|prescription|medication|meds|antidepressants)\b"
    # "I'm HIV positive", "we're pregnant"
    r"|(?:i'm|i am|we're|we are)\s+(?:hiv[- ]positive|pregnant|bipolar|autistic|diabetic|"
    r"epileptic|depressed|suicidal|infertile|anorexic|an alcoholic|an addict)\b"
    # a medication with a dose, taken by someone
    rf"|{_SUBJECT}\s+(?:take|takes|am taking|'m taking|am on|'m on|is on|was on|on|use|uses)\s+"
    r"(?:\d+(?:\.\d+)?\s?(?:mg|mcg|µg|ug|ml|iu|units?)\s+(?:of\s+)?[a-z]{4,}|[a-z]{4,}\s+"
    r"\d+(?:\.\d+)?\s?(?:mg|mcg|µg|ug|ml|iu|units?))\b"
    # other special categories, said of oneself
    r"|(?:i am|i'm|i identify as)\s+(?:a\s+)?(?:gay|lesbian|bisexual|bi|transgender|trans|"
    r"queer|asexual|non-binary|muslim|jewish|catholic|christian|hindu|sikh|buddhist|atheist|"
    r"mormon|jehovah's witness)\b"
    r"|(?:i am|i'm)\s+(?:a\s+)?member of (?:the\s+)?[\w ]{0,30}?(?:union|party)\b"
    r"|(?:ich bin|ich habe|ich wurde)\s[^.?!\n]{0,30}?(?:diabetes|krebs|depression|schwanger|"
    r"diagnostiziert)"
    r"|(?:je suis|j'ai|on m'a)\s[^.?!\n]{0,30}?(?:diabète|diabetique|diabétique|cancer|"
    r"enceinte|diagnostiqué)"
    r"|(?:tengo|estoy|me diagnosticaron)\s[^.?!\n]{0,30}?(?:diabetes|cáncer|cancer|"
    r"embarazada|depresión)"
    r")"
)


_SENSITIVE_SET = frozenset(
    [
        "allergic",
        "allergy",
        "therapist",
        "psychiatrist",
        "oncologist",
        "prescription",
        "medication",
        "meds",
        "antidepressants",
        "diagnosed",
        "diagnosis",
        "diagnose",
        "diagnosticated",
        "positive",
        "suffer",
        "suffers",
        "suffering",
        "living",
        "treated",
        "remission",
        "prescribed",
        "chemo",
        "chemotherapy",
        "recovering",
        "pregnant",
        "mg",
        "mcg",
        "µg",
        "ug",
        "ml",
        "iu",
        "units",
        "unit",
        "gay",
        "lesbian",
        "bisexual",
        "bi",
        "trans",
        "transgender",
        "queer",
        "asexual",
        "non-binary",
        "binary",
        "muslim",
        "jewish",
        "catholic",
        "christian",
        "hindu",
        "sikh",
        "buddhist",
        "atheist",
        "mormon",
        "jehovah's",
        "jehovah",
        "union",
        "party",
        "diabetes",
        "diabetic",
        "cancer",
        "leukemia",
        "leukaemia",
        "lymphoma",
        "melanoma",
        "tumor",
        "tumour",
        "hiv",
        "aids",
        "hepatitis",
        "depression",
        "depressed",
        "anxiety",
        "bipolar",
        "schizophrenia",
        "adhd",
        "autism",
        "autistic",
        "asthma",
        "epilepsy",
        "epileptic",
        "dementia",
        "alzheimer's",
        "alzheimers",
        "alzheimer",
        "parkinson's",
        "parkinson",
        "parkinsons",
        "sclerosis",
        "crohn's",
        "crohns",
        "copd",
        "ptsd",
        "ocd",
        "anorexia",
        "bulimia",
        "eating",
        "chlamydia",
        "herpes",
        "syphilis",
        "gonorrhea",
        "gonorrhoea",
        "std",
        "sti",
        "covid",
        "covid-19",
        "stroke",
        "heart",
        "arthritis",
        "lupus",
        "psoriasis",
        "migraine",
        "migraines",
        "insomnia",
        "addiction",
        "alcoholism",
        "celiac",
        "coeliac",
        "endometriosis",
        "hypertension",
        "blood",
        "kidney",
        "fibrosis",
        "syndrome",
        "miscarriage",
        "abortion",
        "infertility",
        "infertile",
        "suicidal",
        "krebs",
        "schwanger",
        "diagnostiziert",
        "diabète",
        "diabétique",
        "diabetique",
        "enceinte",
        "diagnostiqué",
        "embarazada",
        "cáncer",
        "depresión",
        "diagnosticaron",
        "depressionen",
    ]
)


def _sensitive(t: ScanText) -> Iterator[Hit]:
    if _SENSITIVE_SET.isdisjoint(t.words) and "mg" not in t.low:
        return
    for m in _SENSITIVE.finditer(t.text):
        yield Hit("sensitive", m.start(), m.end(), "")


GATE_WORDS = _STREET_WORDS | _ADDRESS_SET | _BIRTH_GATE | _SENSITIVE_SET | {"dot"}
"""The words this module's gates look for (router.privacy joins every module's)."""


def find_prose(t: ScanText) -> Iterator[Hit]:
    """E-mail addresses, street addresses, dates of birth and sensitive personal data."""
    yield from _emails(t)
    yield from _addresses(t)
    yield from _birth_dates(t)
    yield from _sensitive(t)
