"""The privacy scanner: every kind is found, in the right message, and look-alikes are not."""

from __future__ import annotations

import pytest

from router.privacy import Finding, PrivacyConfigError, PrivacyScanner, iban_valid, luhn_valid
from router.protocol import Message

# (kind, text) pairs the scanner must flag.
POSITIVES = [
    ("email", "write to jane.doe+work@example.co.uk today"),
    ("phone", "call me at (555) 123-4567"),
    ("phone", "my number is 555-123-4567 and I have 12 apples"),
    ("phone", "office: +44 20 7123 4567"),
    ("phone", "+1 415 555 2671"),
    ("card", "card 4111 1111 1111 1111 exp 12/29"),
    ("card", "4111111111111111"),
    ("card", "amex 3782-822463-10005"),
    ("iban", "pay to DE89 3704 0044 0532 0130 00"),
    ("iban", "GB82WEST12345698765432"),
    ("national_id", "my SSN is 536-22-8726"),
    ("private_key", "-----BEGIN RSA PRIVATE KEY-----\nMIIEow...\n-----END RSA PRIVATE KEY-----"),
    ("private_key", "-----BEGIN OPENSSH PRIVATE KEY-----"),
    ("api_token", "OPENAI_API_KEY=sk-proj-abcdefghijklmnopqrstuvwxyz012345"),
    ("api_token", "token ghp_" + "A1b2C3d4E5" * 4),
    ("api_token", "aws AKIAZ3MHQ5X7RTPLW2NB"),
    ("api_token", "slack xoxb-123456789012-abcdefghijkl"),
    ("sensitive", "I am allergic to penicillin"),
    ("sensitive", "My therapist says my anxiety is getting worse"),
    ("password", "mot de passe: Soleil2024!"),
    ("address", "my home is 42 Wallaby Way, Sydney"),
    ("phone", "text me at 415.555.2671"),
    ("api_token", "GET https://acme.blob.core.windows.net/c/f?sv=2022-11-02&sp=r&sig=k3J%2Fq8Zr9"
                  "Lx2Vt5Wb7Nc1Md4Pf6Hg0Aa%2BBb3Cc5Dd7E%3D"),
    ("api_token", "Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=Root;"
                  "SharedAccessKey=k3Jq8Zr9Lx2Vt5Wb7Nc1Md4Pf6Hg0AaBb3Cc5Dd7E="),
    ("api_token", "why is Q1w8Q~kF3xZr.Lq9Vt_Ab2Cd3Ef4Gh5Ij6Kl7Mn8 refused?"),  # Entra ID secret
]

# Text that looks close to a kind but is not one.
NEGATIVES = [
    "1234567812345678",  # 16 digits, Luhn-invalid: not a card
    "4111 1111 1111 1112",  # one digit off: not a card
    "GB82WEST12345698765431",  # IBAN shape, wrong checksum
    "000-12-3456",  # SSNs never start with 000
    "version 1.2.3.4567890123",
    "pi is 3.14159265358979",
    "the meeting is on 2024-01-15 at 10:30",
    "order #123456789",
    "ip 192.168.100.200",
    "isbn 978-3-16-148410-0",
    "tel 555-1234",  # too short for a phone number
    "x = 12345678901234567890123",
    "risk-averse, task-based, sk-learn",
    "ghp_short",
    "an @mention on social media",
    "the annual report",
    "user@example.invalid and name@domain.tld",  # reserved and placeholder domains
    "call 555-0142 or (202) 555-0173",  # fictional numbers
    "aws AKIAIOSFODNN7EXAMPLE",  # AWS's own documentation key
    "set OPENAI_API_KEY=sk-... or api_key = YOUR_API_KEY",
    "my SSN is 078-05-1120",  # the famous wallet-card number, published everywhere
    "id 123e4567-e89b-12d3-a456-426614174000, commit 9fceb02d0ae598e95dc970b74767f19372d61af8",
    "What are the symptoms of diabetes?",
    "Mozart was born on 27 January 1756",
    "the password is required",
    "What medication treats anxiety? How does a therapist help?",
    "my essay on diabetes is due",
    "Ring me on 0161 496 0000",  # Ofcom's drama range
    "append ?sv=2022-11-02&sig=<signature> to the URL; SharedAccessKey=<your key>",
]


@pytest.mark.parametrize(("kind", "text"), POSITIVES)
def test_each_kind_is_found(kind: str, text: str) -> None:
    findings = PrivacyScanner().scan_texts([text])
    assert Finding(kind, 1) in findings


@pytest.mark.parametrize("text", NEGATIVES)
def test_look_alikes_are_not_flagged(text: str) -> None:
    assert PrivacyScanner(terms=["Ann"]).scan_texts([text]) == []


def test_findings_name_the_message_across_the_whole_conversation() -> None:
    messages = (
        Message("system", "You are helpful."),
        Message("user", "Hi"),
        Message("assistant", "Sure, mail jane@fastmail.com"),
        Message("user", "Thanks, and what is 2 + 2?"),
    )
    findings = PrivacyScanner().scan(messages)
    assert findings == [Finding("email", 3)]
    assert findings[0].describe() == "email address in message 3"


def test_the_text_being_continued_is_scanned_too() -> None:
    messages = (Message("user", "continue please"),)
    assert PrivacyScanner().scan(messages, continue_from="reach me at 555-123-4567") == [
        Finding("phone", 2)
    ]


def test_user_terms_match_whole_words_in_any_case() -> None:
    scanner = PrivacyScanner(terms=["Project Falcon", "Ann"])
    assert scanner.scan_texts(["notes on PROJECT falcon."]) == [Finding("term", 1)]
    assert scanner.scan_texts(["ask ann"]) == [Finding("term", 1)]
    assert scanner.scan_texts(["annual planning", "falconry"]) == []


def test_user_patterns() -> None:
    scanner = PrivacyScanner(patterns=[r"ACME-\d{4}"])
    assert scanner.scan_texts(["ticket ACME-1234"]) == [Finding("pattern", 1)]
    assert scanner.scan_texts(["ticket ACME-12"]) == []


def test_an_invalid_pattern_is_a_clear_error() -> None:
    with pytest.raises(PrivacyConfigError, match="not a valid regular expression"):
        PrivacyScanner(patterns=["(unclosed"])


def test_findings_never_carry_the_private_text() -> None:
    finding = PrivacyScanner().scan_texts(["536-22-8726"])[0]
    assert "536" not in repr(finding) and "536" not in finding.describe()


def test_checksums() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("DE89 3704 0044 0532 0130 00") and not iban_valid("DE89370400440532013001")
    assert not iban_valid("XX89370400440532013000")  # unknown country


# --- normalising, spans, the request ---------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("card", "card 4111\u00a01111\u00a01111\u00a01111"),  # non-breaking spaces
        ("card", "card 4111\u20131111\u20131111\u20131111"),  # en dashes
        ("card", "card ４１１１ １１１１ １１１１ １１１１"),  # full-width digits
        ("card", "card 4111 11\u200b11 1111 1111"),  # a zero-width space inside
        ("email", "jane＠fastmail.com"),  # full-width at sign
        ("phone", "call +44\u202f20\u202f7123\u202f4567"),  # narrow no-break spaces
    ],
)
def test_unicode_spaces_dashes_and_wide_forms_are_read_as_ascii(kind: str, text: str) -> None:
    assert Finding(kind, 1) in PrivacyScanner().scan_texts([text])


@pytest.mark.parametrize(
    "text",
    ["SSN: 536 22 8726", "my social security number is 536 22 8726", "ITIN 912 78 1234"],
)
def test_us_ids_grouped_with_spaces_are_found(text: str) -> None:
    """stdnum's compact() for SSN and ITIN strips dashes only: spaces must go first."""
    assert PrivacyScanner().scan_texts([text]) == [Finding("national_id", 1)]


def test_a_decomposed_accent_reads_like_the_composed_one() -> None:
    """macOS pastes "né" as "ne" + U+0301: NFKC must see the letter and its mark together."""
    composed = "je suis n\u00e9 le 3 mars 1980"
    decomposed = "je suis ne\u0301 le 3 mars 1980"
    scanner = PrivacyScanner()
    assert scanner.scan_texts([composed]) == [Finding("birth_date", 1)]
    assert scanner.scan_texts([decomposed]) == [Finding("birth_date", 1)]


def test_a_span_over_a_decomposed_character_covers_its_marks() -> None:
    # Redaction replaces the span: a mark left behind would ride on the placeholder.
    scanner = PrivacyScanner(terms=["Jos\u00e9", "Ren\u00e9e"])
    for text, name in [("ask Jose\u0301 today", "Jose\u0301"), ("Rene\u0301e", "Rene\u0301e")]:
        [span] = scanner.spans([text])
        assert text[span.start : span.end] == name


def test_spans_point_at_the_original_characters() -> None:
    text = "x ４１１１\u00a0１１１１\u00a0１１１１\u00a0１１１１ y"
    [span] = PrivacyScanner().spans([text])
    assert span.kind == "card" and text[span.start : span.end] == text[2:-2]
    zw = "pay 4111 11\u200b11 1111 1111 now"
    [span] = PrivacyScanner().spans(["hello", zw])
    assert span.index == 1 and zw[span.start : span.end] == "4111 11\u200b11 1111 1111"


def test_national_phone_numbers_are_read_in_the_users_regions() -> None:
    text = "ruf mich an: 030 1234567"
    assert PrivacyScanner(regions=["US"]).scan_texts([text]) == []
    assert PrivacyScanner(regions=["US", "DE"]).scan_texts([text]) == [Finding("phone", 1)]


def test_an_unknown_region_is_a_clear_error() -> None:
    with pytest.raises(PrivacyConfigError, match="not a region code"):
        PrivacyScanner(regions=["Narnia"])


def test_ids_without_a_checksum_need_a_word_naming_them() -> None:
    assert PrivacyScanner().scan_texts(["my NI number is AB123456C"]) == [
        Finding("national_id", 1)
    ]
    assert PrivacyScanner().scan_texts(["room AB123456C"]) == []


def test_the_request_scan_covers_stop_strings_and_the_adapter_name() -> None:
    from router.protocol import ChatRequest, Sampling

    request = ChatRequest(
        (Message("user", "hello"),),
        Sampling(stop=("SSN 536-22-8726",)),
        adapter="jane.doe@fastmail.com",
        continue_from="call 415-555-2671",
    )
    findings = PrivacyScanner().scan_request(request)
    assert Finding("phone", 2) in findings
    assert Finding("national_id", 3, "stop strings") in findings
    assert Finding("email", 3, "adapter name") in findings
    assert "the stop strings" in Finding("email", 3, "stop strings").describe()


def test_a_cached_message_gives_the_same_findings() -> None:
    scanner = PrivacyScanner()
    texts = ["mail jane@fastmail.com", "nothing here", "card 4111 1111 1111 1111"]
    first = scanner.spans(texts)
    assert scanner.spans(list(texts)) == first
    assert scanner.spans(texts[1:]) == [
        type(s)(s.kind, s.index - 1, s.start, s.end) for s in first if s.index > 0
    ]


def test_the_cache_keeps_no_more_than_its_share_of_text() -> None:
    import router.privacy as privacy

    scanner = PrivacyScanner()
    big = "word " * 200_000  # a million characters a paste
    for i in range(8):
        scanner.scan_texts([big + str(i)])
    assert scanner._cached_chars <= privacy._CACHE_CHARS
    assert sum(len(k) for k in scanner._cache) == scanner._cached_chars
