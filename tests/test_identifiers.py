"""Subject identifiers: validation and normal forms.

Expected values are written out by hand or computed by checks written here independently of
the module (a Luhn sum over all ten digits, string assembly of the normal forms).
"""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from include.retention import identifiers
from include.retention.errors import RetentionError
from include.retention.identifiers import InvalidIdentifier, identify, normalise
from include.retention.pseudonym import subject_ref

TODAY = dt.date(2026, 11, 25)
KEY = b"k" * 32


def luhn_valid(ten_digits: str) -> bool:
    """The classic Luhn test over the whole number: double every second digit from the right
    (here: the 1st, 3rd, … of ten), digit sums, total divisible by 10."""
    total = 0
    for position, char in enumerate(reversed(ten_digits)):
        value = int(char) * (2 if position % 2 else 1)
        total += value // 10 + value % 10
    return total % 10 == 0


def with_check_digit(nine: str) -> str:
    return next(nine + d for d in "0123456789" if luhn_valid(nine + d))


# ------------------------------------------------------------------------------ personnummer

# Published examples (Skatteverket / Wikipedia), written out with their expected normal form.
KNOWN_VALID = [
    ("811218-9876", "198112189876", "personnummer"),
    ("640823-3234", "196408233234", "personnummer"),
    ("19640823-3234", "196408233234", "personnummer"),
    ("196408233234", "196408233234", "personnummer"),
    ("6408233234", "196408233234", "personnummer"),
    ("640823+3234", "186408233234", "personnummer"),  # '+': 100 or older
    ("701063-2391", "197010632391", "samordningsnummer"),  # day 03 + 60
    (" 19701063-2391 ", "197010632391", "samordningsnummer"),
    ("121212-1212", "201212121212", "personnummer"),  # a 10-digit date in this century
]


@pytest.mark.parametrize(("raw", "expected", "variant"), KNOWN_VALID)
def test_known_personnummer(raw: str, expected: str, variant: str) -> None:
    found = normalise("personnummer", raw, today=TODAY)
    assert (found.value, found.variant) == (expected, variant)


KNOWN_INVALID = [
    ("811218-9875", "check digit"),
    ("640823-3235", "check digit"),
    ("701063-2392", "check digit"),
    ("811318-987" + with_check_digit("811318987")[-1], "does not exist"),  # month 13
    ("810230-987" + with_check_digit("810230987")[-1], "does not exist"),  # 30 February
    ("810292-987" + with_check_digit("810292987")[-1], "does not exist"),  # day 32 + 60
    ("19640823+3234", "only used with the 10-digit form"),
    ("64-08-23-3234", "YYYYMMDD-NNNN"),
    ("6408233", "YYYYMMDD-NNNN"),
    ("abcdef-ghij", "YYYYMMDD-NNNN"),
    ("８１１２１８-９８７６", "only the digits 0-9"),  # 811218-9876 in full-width digits
    ("١٩٨١١٢١٨-٩٨٧٦", "only the digits 0-9"),  # Arabic-Indic digits
    ("811218-98７6", "only the digits 0-9"),
    ("", "is empty"),
    ("   ", "is empty"),
]


@pytest.mark.parametrize(("raw", "problem"), KNOWN_INVALID)
def test_invalid_personnummer(raw: str, problem: str) -> None:
    with pytest.raises(InvalidIdentifier, match=problem) as caught:
        normalise("personnummer", raw, today=TODAY)
    assert caught.value.field == "personnummer"


def test_future_birth_date_is_refused() -> None:
    raw = "2027" + with_check_digit("270101123")[2:]
    with pytest.raises(InvalidIdentifier, match="future"):
        normalise("personnummer", raw, today=TODAY)


def test_ten_digits_take_the_latest_century_not_in_the_future() -> None:
    # 26-11-25 is today: this century; 26-11-26 is tomorrow: the century before.
    today = with_check_digit("261125123")
    tomorrow = with_check_digit("261126123")
    assert normalise("personnummer", today, today=TODAY).value == "20" + today
    assert normalise("personnummer", tomorrow, today=TODAY).value == "19" + tomorrow


dates = st.dates(min_value=dt.date(1927, 1, 1) - dt.timedelta(days=36500), max_value=TODAY)


HUNDRED_YEARS_AGO = dt.date(TODAY.year - 100, TODAY.month, TODAY.day)


@settings(deadline=None)  # no timing: the machine is shared
@given(born=dates, serial=st.integers(0, 999), samordning=st.booleans(), form=st.integers(0, 3))
def test_every_spelling_of_a_valid_number_has_one_normal_form(
    born: dt.date, serial: int, samordning: bool, form: int
) -> None:
    day = born.day + (60 if samordning else 0)
    ten = with_check_digit(f"{born.year % 100:02d}{born.month:02d}{day:02d}{serial:03d}")
    century = f"{born.year // 100}"
    spellings = [f"{century}{ten[:6]}-{ten[6:]}", f"{century}{ten}"]
    if born > HUNDRED_YEARS_AGO:  # under 100: '-' or no separator
        spellings += [f"{ten[:6]}-{ten[6:]}", ten]
    else:  # 100 or older: '+'
        spellings += [f"{ten[:6]}+{ten[6:]}"]
    found = normalise("personnummer", spellings[form % len(spellings)], today=TODAY)
    assert found.value == f"{born.year:04d}{ten[2:]}"
    assert found.variant == ("samordningsnummer" if samordning else "personnummer")


@settings(deadline=None)  # no timing: the machine is shared
@given(born=dates, serial=st.integers(0, 999), wrong=st.integers(1, 9))
def test_a_wrong_check_digit_is_always_refused(born: dt.date, serial: int, wrong: int) -> None:
    ten = with_check_digit(f"{born.year % 100:02d}{born.month:02d}{born.day:02d}{serial:03d}")
    bad = ten[:9] + str((int(ten[9]) + wrong) % 10)
    assert not luhn_valid(bad)
    with pytest.raises(InvalidIdentifier, match="check digit"):
        normalise("personnummer", f"{born.year // 100}{bad}", today=TODAY)


# ------------------------------------------------------------------------------ phone

KNOWN_PHONES = [
    ("070-123 45 67", "+46701234567"),
    ("+46 70 123 45 67", "+46701234567"),
    ("+46 (0)70 123 45 67", "+46701234567"),
    ("+46(0)70-1234567", "+46701234567"),
    ("0046 70 123 45 67", "+46701234567"),
    ("+46 070 123 45 67", "+46701234567"),
    ("08-123 456 78", "+46812345678"),
    ("(08) 12 34 56", "+468123456"),
    ("+44 20 7946 0958", "+442079460958"),
    ("+44 (0)20 7946 0958", "+442079460958"),
    ("+1 (212) 555-0123", "+12125550123"),
]


@pytest.mark.parametrize(("raw", "expected"), KNOWN_PHONES)
def test_known_phones(raw: str, expected: str) -> None:
    assert normalise("phone", raw).value == expected


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("70 123 45 67", "start with \\+"),
        ("070-ABC 45 67", "only digits"),
        ("+46 70", "7-9 digits after \\+46"),
        ("+46 70 123 45 67 89 1", "7-9 digits after \\+46"),
        ("+0 123 456 789", "never starts with 0"),
        ("+1 23", "8-15 digits"),
        ("+1 2345 6789 0123 4567", "8-15 digits"),
        ("070\n1234567", "control characters"),
    ],
)
def test_invalid_phones(raw: str, problem: str) -> None:
    with pytest.raises(InvalidIdentifier, match=problem):
        normalise("phone", raw)


@settings(deadline=None)  # no timing: the machine is shared
@given(
    number=st.text("0123456789", min_size=8, max_size=8),
    groups=st.lists(st.sampled_from(["", " ", "-"]), min_size=8, max_size=8),
    prefix=st.sampled_from(["07", "+46 7", "+46 (0)7", "0046 7", "+460 7"]),
)
def test_swedish_mobiles_in_any_spelling(number: str, groups: list[str], prefix: str) -> None:
    spaced = "".join(sep + digit for sep, digit in zip(groups, number, strict=True))
    assert normalise("phone", prefix.replace("+460", "+46 0") + spaced).value == "+467" + number


# ------------------------------------------------------------------------------ e-mail


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Anna.Berg@Example.SE", "anna.berg@example.se"),
        ("  anna+nyhetsbrev@example.se\t", "anna+nyhetsbrev@example.se"),
        ("Åsa.Öberg@Företag.se", "åsa.öberg@företag.se"),
        ("o'brien@mail.example.co.uk", "o'brien@mail.example.co.uk"),
        ("a@xn--fretag-jua.se", "a@xn--fretag-jua.se"),
    ],
)
def test_known_emails(raw: str, expected: str) -> None:
    assert normalise("email", raw).value == expected


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("anna.example.se", "no '@'"),
        ("anna@@example.se", "more than one '@'"),
        ("anna@example", "needs a dot"),
        ("anna@example..se", "no empty parts"),
        ("anna berg@example.se", "no spaces"),
        (".anna@example.se", "before '@'"),
        ("anna..berg@example.se", "before '@'"),
        ("@example.se", "before '@'"),
        ("anna@-example.se", "hyphens only inside"),
        ("anna@example.123", "end in a name"),
        ("a" * 65 + "@example.se", "before '@'"),
        ("anna@" + "a" * 64 + ".se", "1-63"),
        ("a@" + ".".join(["b" * 60] * 5) + ".se", "at most 254"),
    ],
)
def test_invalid_emails(raw: str, problem: str) -> None:
    with pytest.raises(InvalidIdentifier, match=problem):
        normalise("email", raw)


ASCII_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
local_parts = st.text(ASCII_LETTERS + "0123456789_+-", min_size=1, max_size=20)
domain_labels = st.text("abcdefghijklmnopqrstuvwxyz0123456789", min_size=1, max_size=12)


@settings(deadline=None)  # no timing: the machine is shared
@given(
    local=local_parts,
    labels=st.lists(domain_labels, min_size=1, max_size=3),
    tld=st.sampled_from(["se", "com", "CO.UK", "Nu"]),
    padding=st.sampled_from(["", " ", "\t ", "  "]),
)
def test_emails_compare_case_and_space_insensitively(
    local: str, labels: list[str], tld: str, padding: str
) -> None:
    address = f"{local}@{'.'.join([*labels, tld])}"
    assert normalise("email", padding + address + padding).value == address.lower()
    assert normalise("email", address.upper()).value == address.lower()


# ------------------------------------------------------------------------------ customer id


@pytest.mark.parametrize(
    ("raw", "expected"), [("K10012", "K10012"), (" k 10012 ", "K10012"), ("ab-12.x_3", "AB-12.X_3")]
)
def test_customer_ids(raw: str, expected: str) -> None:
    assert normalise("customer_id", raw).value == expected


@pytest.mark.parametrize("raw", ["K1/2", "-K1", "K" * 65, "K1;DROP"])
def test_invalid_customer_ids(raw: str) -> None:
    with pytest.raises(InvalidIdentifier, match="customer id is 1-64"):
        normalise("customer_id", raw)


# ------------------------------------------------------------------------------ forms


def test_a_form_gives_every_identifier_normalised() -> None:
    found = identify(
        {"email": "Anna@Example.se", "phone": "070-123 45 67", "personnummer": "", "x": "y"},
        today=TODAY,
    )
    assert [(f.kind, f.value) for f in found] == [
        ("email", "anna@example.se"),
        ("phone", "+46701234567"),
    ]


def test_an_empty_form_is_refused_naming_the_fields() -> None:
    with pytest.raises(RetentionError, match=r"names no person.*email.*phone.*personnummer"):
        identify({"email": "", "phone": None})


def test_every_invalid_field_is_named_and_no_value_is_repeated() -> None:
    form = {"email": "anna(at)example.se", "personnummer": "811218-9875", "phone": "0701234567"}
    with pytest.raises(RetentionError) as caught:
        identify(form, today=TODAY)
    message = str(caught.value)
    assert "email: not an e-mail address" in message
    assert "personnummer: the check digit" in message
    assert "phone" not in message  # the valid field is not blamed
    for value in ("anna(at)example.se", "811218", "9875"):
        assert value not in message


@pytest.mark.parametrize("raw", [123, None, ["a@b.se"], b"a@b.se"])
def test_non_text_is_refused(raw: object) -> None:
    with pytest.raises(InvalidIdentifier, match="must be text"):
        normalise("email", raw)


def test_unknown_kind() -> None:
    with pytest.raises(InvalidIdentifier, match="unknown identifier kind"):
        normalise("passport", "X1")


def test_repr_withholds_the_value() -> None:
    found = normalise("email", "anna@example.se")
    assert "anna" not in repr(found) and "anna" not in str(found)


def test_spellings_share_one_subject_reference() -> None:
    refs = {
        subject_ref(KEY, normalise("phone", raw).value)
        for raw in ("070-123 45 67", "+46701234567", "0046 70 1234567")
    }
    assert len(refs) == 1
    assert identifiers.KINDS == ("email", "phone", "personnummer", "customer_id")


def _full_check(raw: str) -> str | None:
    try:
        return identifiers._normalise_email(raw, "email")
    except InvalidIdentifier:
        return None


def _either(raw: str) -> str | None:
    try:
        return identifiers.normalise_email(raw)
    except InvalidIdentifier:
        return None


_EMAILISH = st.text(alphabet="aZ09_.-+@ !é\n" + "x" * 5, max_size=80)


@settings(max_examples=3000, deadline=None)
@given(st.one_of(_EMAILISH, st.builds(lambda a, b: f"{a}@{b}", _EMAILISH, _EMAILISH)))
def test_the_ascii_fast_path_accepts_exactly_what_the_full_check_accepts(raw: str) -> None:
    assert _either(raw) == _full_check(raw)


@pytest.mark.parametrize(
    "raw",
    ["a@b.se", " A.B@Example.SE ", "a@1.2", "a@b.123", "a@-b.se", "a@b_.se", "a@b_c.se",
     "a..b@c.se", ".a@c.se", "a" * 64 + "@b.se", "a" * 65 + "@b.se", "a@" + "b" * 63 + ".se",
     "a@" + "b" * 64 + ".se", "a@" + ("b" * 60 + ".") * 4 + "se", "a@b.se\n", "a b@c.se"],
)  # fmt: skip
def test_the_fast_path_agrees_on_the_edges(raw: str) -> None:
    assert _either(raw) == _full_check(raw)
