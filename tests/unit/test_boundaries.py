"""Property tests of the classes of input that used to reach a 500 (issue 8): the body
decoders, identifiers, the track and amount arithmetic, and the external-answer bounds."""

from __future__ import annotations

import itertools
import json
import math
import unicodedata
from typing import Any

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from command_api.app import CreateOffer, FinishOrder, SettleDebt
from command_api.external import (
    configs_nonsense,
    scooter_nonsense,
    user_nonsense,
    zone_nonsense,
)
from shared.domain import (
    MAX_AMOUNT,
    ConfigsAnswer,
    PaymentRequest,
    PriceCoeffSettings,
    ScooterData,
    TariffZone,
    TrackPoint,
    UserProfile,
)
from shared.errors import InvalidRequest
from shared.infra.boundary import decode_as, decode_json, is_identifier, json_depth_exceeds
from shared.lifecycle import ride_cost
from shared.pricing import segment_meters, track_distance_meters
from shared.settings import Settings

SETTINGS = Settings()
DEPTH = SETTINGS.serving.json_max_depth
HALF_EARTH_M = math.pi * 6_371_008.8 + 1

# --- decoders: any bytes are a value or InvalidRequest, never anything else -------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=40,
)


def depth_of(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    return 0


@given(st.binary(max_size=300))
@example(b'{"user_id":"user-\xff","scooter_id":"scooter-1"}')
@example(b'{"user_id":' + b"[" * 1000 + b"]" * 1000 + b"}")
@example(b"[" * 100_000)
@example(b'{"track":[{"t":1e999,"lat":0,"lon":0}]}')
def test_any_bytes_decode_or_are_an_invalid_request(body: bytes) -> None:
    for decode in (
        lambda: decode_json(body, DEPTH),
        lambda: decode_as(body, msgspec.json.Decoder(CreateOffer)),
        lambda: decode_as(body, msgspec.json.Decoder(FinishOrder)),
        lambda: decode_as(body, msgspec.json.Decoder(PaymentRequest)),
    ):
        refused: InvalidRequest | None = None
        try:
            decode()
        except InvalidRequest as exc:  # anything else fails the test
            refused = exc
        assert refused is None or (refused.status, refused.code) == (400, "invalid_request")


@given(json_values, st.integers(min_value=0, max_value=8))
def test_depth_check_agrees_with_the_value(value: Any, limit: int) -> None:
    body = json.dumps(value).encode()
    assert json_depth_exceeds(body, limit) == (depth_of(value) > limit)


@given(st.integers(min_value=DEPTH + 1, max_value=5_000))
def test_too_deep_bodies_are_refused_whatever_the_depth(depth: int) -> None:
    body = b'{"track":' + b"[" * depth + b"]" * depth + b"}"
    with pytest.raises(InvalidRequest, match="nests deeper"):
        decode_json(body, DEPTH)


def test_brackets_inside_strings_do_not_count() -> None:
    body = json.dumps({"user_id": "[" * 1000, "scooter_id": '{"\\"[[['}).encode()
    assert not json_depth_exceeds(body, 2)


@given(st.text(max_size=80))
@example("user-1")
@example("a\x00b")
@example("a\nb")
@example("user-1\n")
@example("ünïcode")
def test_identifiers_are_a_small_ascii_alphabet(text: str) -> None:
    assert is_identifier(text) == (
        0 < len(text) <= 64 and all(c.isascii() and (c.isalnum() or c in "_.:-") for c in text)
    )


# --- an operator's reason ----------------------------------------------------------------------

BLANKS = [" ", "\xa0", "\u2003", "\u3000", unicodedata.lookup("BRAILLE PATTERN BLANK")]
INVISIBLE = [
    unicodedata.lookup(name)
    for name in (
        "SOFT HYPHEN",
        "COMBINING GRAPHEME JOINER",
        "ARABIC LETTER MARK",
        "HANGUL CHOSEONG FILLER",
        "HANGUL JUNGSEONG FILLER",
        "KHMER VOWEL INHERENT AQ",
        "MONGOLIAN FREE VARIATION SELECTOR ONE",
        "MONGOLIAN VOWEL SEPARATOR",
        "ZERO WIDTH SPACE",
        "ZERO WIDTH NON-JOINER",
        "ZERO WIDTH JOINER",
        "LEFT-TO-RIGHT MARK",
        "RIGHT-TO-LEFT MARK",
        "WORD JOINER",
        "FUNCTION APPLICATION",
        "INHIBIT SYMMETRIC SWAPPING",
        "HANGUL FILLER",
        "VARIATION SELECTOR-16",
        "ZERO WIDTH NO-BREAK SPACE",
        "HALFWIDTH HANGUL FILLER",
        "SHORTHAND FORMAT LETTER OVERLAP",
        "MUSICAL SYMBOL BEGIN BEAM",
        "TAG LATIN CAPITAL LETTER A",
        "VARIATION SELECTOR-17",
        "VARIATION SELECTOR-256",
    )
] + ["\u2065", "\ufff0", "\ufff8", "\uffff", "\u0378", "\ue000", "\U000e0fff"]  # reserved,
# a noncharacter, unassigned, private use
HANGUL_FILLERS = [c for c in INVISIBLE if "FILLER" in unicodedata.name(c, "")]
# never in a reason: C0 and C1 controls (line breaks, tab, ESC, NUL), line and paragraph
# separators, and the explicit bidirectional embeddings, overrides and isolates
FORBIDDEN = [
    chr(c)
    for c in (
        *range(0x20),
        *range(0x7F, 0xA0),
        0x2028,
        0x2029,
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    )
]
# drawn over the character before them, or alone on a dotted circle: they count
COMBINING = ["\u0301", "\u0308", "\u05b8", "\u064e", "\u093f", "\u094d", "\u20dd"]
visible = st.one_of(
    st.characters(categories=["L", "N", "P", "S"], exclude_characters=HANGUL_FILLERS),
    st.sampled_from(COMBINING),
)
reason_text = st.lists(
    st.one_of(visible, st.sampled_from(BLANKS + INVISIBLE)), min_size=0, max_size=300
).map("".join)


def reason_accepted(reason: str) -> bool:
    try:
        msgspec.json.decode(msgspec.json.encode({"reason": reason}), type=SettleDebt)
    except msgspec.ValidationError:
        return False
    return True


@given(st.lists(st.sampled_from(BLANKS + INVISIBLE), min_size=1, max_size=60).map("".join))
@example("\U000e0041")  # a tag alone
@example("\u2800\u3164")
def test_a_reason_of_blanks_and_invisible_characters_only_is_refused(reason: str) -> None:
    assert not reason_accepted(reason)


@given(reason_text, visible, reason_text)
@example("", "r", "")
@example("\u200b", "x", "\u200d\u3000")
@example("\U0001f9d1\u200d", "\U0001f527", " fixed")  # a ZWJ emoji sequence
@example("caf", "e", "\u0301")
@example("\u0915", "\u094d", "\u0937")  # Devanagari conjunct with a virama
@example("\u05e9\u05c1\u05b8", "\u05dc", "\u05d5\u05b9\u05dd")  # pointed Hebrew
@example("x" * 250, "x", "x" * 250)  # 501
def test_a_one_line_reason_with_something_visible_is_accepted_up_to_500_characters(
    before: str, mark: str, after: str
) -> None:
    reason = before + mark + after
    assert reason_accepted(reason) == (len(reason) <= 500)


@given(reason_text, st.sampled_from(FORBIDDEN), reason_text)
@example("ok", "\n", "")
@example("paid ", "\u202e", "dnuof")
def test_a_reason_with_a_control_or_reordering_character_is_refused(
    before: str, bad: str, after: str
) -> None:
    assert not reason_accepted(before + "x" + bad + after)


# --- track and amount arithmetic ---------------------------------------------------------------

points = st.builds(
    TrackPoint,
    t=st.floats(min_value=0, max_value=4e9),
    lat=st.floats(min_value=-90, max_value=90),
    lon=st.floats(min_value=-180, max_value=180),
)


@given(st.lists(points, max_size=60), st.floats(min_value=1, max_value=1_000))
def test_track_distance_is_bounded_by_speed_and_fits_64_bits(
    track: list[TrackPoint], max_kmh: float
) -> None:
    unfiltered = track_distance_meters(track)
    filtered = track_distance_meters(track, max_kmh)
    assert 0 <= filtered <= unfiltered <= HALF_EARTH_M * max(len(track) - 1, 0)
    assert unfiltered < MAX_AMOUNT
    # every counted segment was at most max_kmh, so the total is too (plus rounding)
    moving = sum(max(0.0, b.t - a.t) for a, b in itertools.pairwise(track))
    assert filtered <= max_kmh / 3.6 * moving + 1e-6 * len(track) + 1


def test_alternating_antipodes_count_nothing_at_an_impossible_speed() -> None:
    """The issue's 109-point track: half the Earth per second."""
    track = [TrackPoint(t=i, lat=0, lon=0 if i % 2 == 0 else 180) for i in range(109)]
    assert segment_meters(track[0], track[1]) > 20_000_000
    assert track_distance_meters(track) > 2**31  # what overflowed the 32-bit column
    assert track_distance_meters(track, SETTINGS.rides.track_max_speed_kmh) == 0


def test_plausible_segments_count_and_glitches_do_not() -> None:
    walk = [TrackPoint(t=0, lat=55.75, lon=37.61), TrackPoint(t=60, lat=55.76, lon=37.61)]
    jump = [*walk, TrackPoint(t=61, lat=0, lon=0)]  # 6,000 km in one second
    same_moment = [*walk, TrackPoint(t=60, lat=55.77, lon=37.61)]
    assert track_distance_meters(walk, 150) == pytest.approx(1_112, abs=2)
    assert track_distance_meters(jump, 150) == track_distance_meters(walk, 150)
    assert track_distance_meters(same_moment, 150) == track_distance_meters(walk, 150)


@settings(max_examples=300)
@given(
    seconds=st.integers(min_value=0, max_value=2**62),
    more=st.integers(min_value=0, max_value=2**40),
    per_minute=st.integers(min_value=0, max_value=SETTINGS.bounds.tariff_price_per_minute_max * 10),
    unlock=st.integers(min_value=0, max_value=SETTINGS.bounds.tariff_price_unlock_max),
    free=st.integers(min_value=0, max_value=SETTINGS.bounds.free_ride_seconds_max),
)
def test_ride_cost_is_bounded_monotone_and_capped(
    seconds: int, more: int, per_minute: int, unlock: int, free: int
) -> None:
    cap = SETTINGS.rides.max_charged_seconds

    def cost(s: int) -> int:
        return ride_cost(s, per_minute, unlock, free, max_charged_seconds=cap)

    assert 0 <= cost(seconds) <= cost(seconds + more) < 2**63
    assert cost(seconds) <= cap * per_minute // 60 + unlock
    if seconds >= max(free, cap):  # past the cap the amount no longer grows
        assert cost(seconds) == cost(seconds + more) == cap * per_minute // 60 + unlock
    if seconds < min(free, cap):
        assert cost(seconds) == ride_cost(seconds, per_minute, unlock, free)


def test_a_ride_of_years_is_charged_for_the_cap() -> None:
    years = 3 * 365 * 86_400
    cap = SETTINGS.rides.max_charged_seconds
    assert ride_cost(years, 24, 45, 5, max_charged_seconds=cap) == cap * 24 // 60 + 45


# --- external answers outside the sane bounds are nonsense -------------------------------------


def coeffs(**changed: Any) -> ConfigsAnswer:
    return ConfigsAnswer(price_coeff_settings=PriceCoeffSettings(**changed))


@pytest.mark.parametrize(
    ("answer", "check", "field"),
    [
        (ScooterData(id="s", zone_id="z", charge=101), scooter_nonsense, "charge"),
        (ScooterData(id="s", zone_id="z", charge=-1), scooter_nonsense, "charge"),
        (
            TariffZone(id="z", price_per_minute=-1, price_unlock=0, default_deposit=0),
            zone_nonsense,
            "price_per_minute",
        ),
        (
            TariffZone(id="z", price_per_minute=1, price_unlock=2**70, default_deposit=0),
            zone_nonsense,
            "price_unlock",
        ),
        (
            TariffZone(id="z", price_per_minute=1, price_unlock=1, default_deposit=10**12),
            zone_nonsense,
            "default_deposit",
        ),
        (UserProfile(id="u", total_debt=-5), user_nonsense, "total_debt"),
        (UserProfile(id="u", current_debt=10**20), user_nonsense, "current_debt"),
        (coeffs(surge=1e308), configs_nonsense, "surge"),
        (coeffs(surge=0.0), configs_nonsense, "surge"),
        (coeffs(surge=math.nan), configs_nonsense, "surge"),
        (coeffs(low_charge_discount=3.0), configs_nonsense, "low_charge_discount"),
        (coeffs(deposit_multiplier=0.5), configs_nonsense, "deposit_multiplier"),
        (coeffs(free_ride_seconds=10**9), configs_nonsense, "free_ride_seconds"),
        (coeffs(low_charge_threshold=-3), configs_nonsense, "low_charge_threshold"),
    ],
)
def test_answers_outside_the_bounds_are_nonsense(answer: Any, check: Any, field: str) -> None:
    wrong = check(answer, SETTINGS)
    assert wrong is not None
    assert wrong.startswith(f"{field}=")


def test_ordinary_answers_are_sane() -> None:
    assert scooter_nonsense(ScooterData(id="s", zone_id="z", charge=57), SETTINGS) is None
    zone = TariffZone(id="z", price_per_minute=12, price_unlock=45, default_deposit=300)
    assert zone_nonsense(zone, SETTINGS) is None
    assert user_nonsense(UserProfile(id="u", total_debt=20_000), SETTINGS) is None
    assert configs_nonsense(coeffs(surge=2.0, low_charge_discount=0.75), SETTINGS) is None
