"""What every HTTP boundary of ours accepts: any bytes in, a 4xx problem out when unusable.

Litestar decodes a JSON body to plain Python objects before converting it to the
handler's type; its decoder raises ``UnicodeDecodeError`` on a body that is not UTF-8
and ``RecursionError`` on deep nesting, which would reach the client as a 500. The
request class here decodes the body instead, straight into the handler's ``data`` type
(one pass in C; a value nested deeper than that type allows fails at its first extra
level, so the type bounds the depth), or, for an untyped body, into plain objects after
a ``json_max_depth`` check. Missing, not UTF-8, too deep, not JSON or not the type →
:class:`shared.errors.InvalidRequest` (400 ``invalid_request``), its detail saying which.
The identifier types refuse NUL, control characters and anything outside a small ASCII
alphabet before a value reaches Postgres, Redis or a log line.
"""

from __future__ import annotations

import itertools
import re
import unicodedata
from typing import Annotated, Any, TypeVar

import msgspec
from litestar import Request
from litestar.types import Empty

from shared.domain import ID_MAX_LENGTH, ID_PATTERN
from shared.errors import InvalidRequest, UnsupportedMediaType, echo

T = TypeVar("T")

# --- identifiers -------------------------------------------------------------------------------

# (?!\n): Python's "$" also matches before a final line break, so "user-1\n" passed
# msgspec, Litestar and is_identifier; the lookahead means the same in ECMA-262 (OpenAPI).
# One definition with the external answers' ids (shared.domain.ExternalId).
IDENTIFIER_PATTERN = ID_PATTERN
IDENTIFIER_MAX_LENGTH = ID_MAX_LENGTH

Identifier = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=IDENTIFIER_MAX_LENGTH,
        pattern=IDENTIFIER_PATTERN,
        description="An id of a rider or scooter: 1..64 of A-Z a-z 0-9 _ . : -",
    ),
]
"""A rider or scooter id as the APIs accept it (the stubs' data set uses ``user-17``)."""

_IDENTIFIER = re.compile(IDENTIFIER_PATTERN)


def is_identifier(text: str) -> bool:
    """Whether ``text`` is a well-formed :data:`Identifier`."""
    return 0 < len(text) <= IDENTIFIER_MAX_LENGTH and _IDENTIFIER.match(text) is not None


# --- free text for people ----------------------------------------------------------------------

# Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt, Unicode 15): drawn as
# nothing. With the blank-looking characters a "name" or "reason" is often made of.
_IGNORABLE_RANGES = (
    (0x00AD, 0x00AD),  # soft hyphen
    (0x034F, 0x034F),  # combining grapheme joiner
    (0x061C, 0x061C),  # Arabic letter mark
    (0x115F, 0x1160),  # Hangul choseong and jungseong fillers
    (0x17B4, 0x17B5),  # Khmer inherent vowels
    (0x180B, 0x180F),  # Mongolian variation selectors and vowel separator
    (0x200B, 0x200F),  # zero-width space, joiners, LRM, RLM
    (0x202A, 0x202E),  # bidirectional embeddings and overrides
    (0x2060, 0x206F),  # word joiner, invisible operators, isolates, deprecated formats
    (0x3164, 0x3164),  # Hangul filler
    (0xFE00, 0xFE0F),  # variation selectors 1-16
    (0xFEFF, 0xFEFF),  # zero-width no-break space (BOM)
    (0xFFA0, 0xFFA0),  # halfwidth Hangul filler
    (0xFFF0, 0xFFF8),  # reserved
    (0x1BCA0, 0x1BCA3),  # shorthand format controls
    (0x1D173, 0x1D17A),  # musical symbol formatting
    (0xE0000, 0xE0FFF),  # tags, variation selectors 17-256, reserved
)
_INVISIBLE = frozenset(
    itertools.chain.from_iterable(range(lo, hi + 1) for lo, hi in _IGNORABLE_RANGES)
) | {0x2800}  # Braille pattern blank
# control, format, surrogate, private use, unassigned, separators (blanks, line breaks)
_UNSEEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp"})


def shows_something(text: str) -> bool:
    """Whether ``text`` has at least one character a reader sees: not a blank or line
    break, not a control, format, private-use or unassigned character, not a Unicode
    default-ignorable one (zero-width spaces and joiners, BOM, variation selectors, tags,
    Hangul fillers) and not the Braille blank. Combining marks count (they are drawn).

    The rule of an operator's ``reason`` "with something visible" (docs/operator-api.md);
    a JSON-schema pattern cannot say it for characters outside the BMP in both Python's
    and ECMA-262's syntax, so the command API checks it after decoding.
    """
    return any(
        ord(c) not in _INVISIBLE and unicodedata.category(c) not in _UNSEEN_CATEGORIES for c in text
    )


# --- JSON bodies --------------------------------------------------------------------------------

_OPENERS = frozenset(b"[{")
# every byte except the four brackets, for bytes.translate(None, delete=...)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)


# Litestar's own Host check (litestar._asgi.utils.is_valid_host, private): the lanes in
# front of its routing (command_api/fast_path.py, query_api/screen_lane.py) pass any
# other Host on to Litestar, which refuses it 400.
_HOST = re.compile(rb"\A[0-9A-Za-z!$&'()*+,;=\-._~:\[\]@%]*\Z")


def is_valid_host(value: bytes) -> bool:
    """Whether ``value`` (a ``Host`` header's bytes) is one Litestar routes; the lanes
    that answer before Litestar's routing (ADRs 0011, 0012) use it to pass the others on."""
    return _HOST.match(value) is not None


def json_depth_exceeds(body: bytes, limit: int) -> bool:
    """Whether the JSON text ``body`` nests arrays/objects deeper than ``limit``.

    Cheap for ordinary bodies: when there are no more brackets than ``limit`` at all,
    the answer is no without a scan. Brackets inside string literals are ignored.
    """
    if body.count(b"[") + body.count(b"{") <= limit:
        return False
    brackets = _STRING.sub(b"", body).translate(None, delete=_NOT_BRACKETS)
    steps = (1 if b in _OPENERS else -1 for b in brackets)
    return any(depth > limit for depth in itertools.accumulate(steps))


def is_json_media_type(value: str) -> bool:
    """Whether a ``Content-Type`` value declares JSON we read: ``application/json`` or
    ``application/<anything>+json`` (RFC 6839), with no charset other than UTF-8 (RFC
    8259 section 8.1: JSON exchanged between systems is UTF-8)."""
    kind, _, parameters = value.partition(";")
    kind = kind.strip().lower()
    if kind != "application/json" and not (
        kind.startswith("application/") and kind.endswith("+json")
    ):
        return False
    for parameter in parameters.split(";"):
        name, _, given = parameter.partition("=")
        if name.strip().lower() == "charset" and given.strip().strip('"').lower() not in (
            "utf-8",
            "utf8",
        ):
            return False
    return True


def check_media_type(value: str | None) -> None:
    """Refuse a body declared as anything but JSON in UTF-8 (none declared: read as JSON).

    Raises:
        UnsupportedMediaType: ``value`` is not :func:`is_json_media_type`.
    """
    if value is not None and value != "application/json" and not is_json_media_type(value):
        raise UnsupportedMediaType(f"a body of type {echo(value)!r}: send application/json")


_untyped = msgspec.json.Decoder()


def decode_json(body: bytes, max_depth: int) -> Any:
    """The JSON value of ``body`` (plain Python objects).

    Raises:
        InvalidRequest: not UTF-8, not JSON, or nested deeper than ``max_depth``.
    """
    if json_depth_exceeds(body, max_depth):
        raise InvalidRequest(f"the JSON body nests deeper than {max_depth} levels")
    try:
        return _untyped.decode(body)
    except UnicodeDecodeError:
        raise InvalidRequest("the body is not valid UTF-8") from None
    except RecursionError:
        raise InvalidRequest(f"the JSON body nests deeper than {max_depth} levels") from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(not_json(body, exc)) from None


BODY_MISSING = "the request body is missing: send a JSON object"
_HIGH_SURROGATE = re.compile(rb"\\u[dD][89abAB][0-9a-fA-F]{2}")


def not_json(body: bytes, exc: msgspec.DecodeError) -> str:
    """The ``detail`` for a body msgspec could not parse as JSON (not a validation error):
    its messages alone ("Input data was truncated") do not say what is wrong."""
    if not body.strip(b" \t\r\n"):
        return (
            BODY_MISSING if not body else "the request body is only whitespace: send a JSON object"
        )
    reason = str(exc)
    if reason == "Input data was truncated":
        if _HIGH_SURROGATE.search(body):  # msgspec reads on for the pair's second half
            reason = "a \\uD800-\\uDBFF escape without its low surrogate, or the text ends early"
        else:
            reason = "the text ends before the JSON value does"
    return f"the body is not valid JSON: {reason}"


def decode_as(body: bytes, decoder: msgspec.json.Decoder[T]) -> T:
    """``body`` decoded by the typed ``decoder``: input nested deeper than the type fails
    at its first extra level, so no scan is needed (for a type that refuses unknown
    fields; an open one may skip a deep unknown value: check :func:`json_depth_exceeds`).

    Raises:
        InvalidRequest: not UTF-8, not JSON, nested deeper than the type allows, or not
            of the decoder's type (the message names the offending field).
    """
    try:
        return decoder.decode(body)
    except UnicodeDecodeError:
        raise InvalidRequest("the body is not valid UTF-8") from None
    except RecursionError:  # an unknown field's value, skipped recursively by msgspec
        raise InvalidRequest("the JSON body nests too deep") from None
    except msgspec.ValidationError as exc:  # JSON, but not of the type
        raise InvalidRequest(str(exc)) from None
    except msgspec.DecodeError as exc:
        raise InvalidRequest(not_json(body, exc)) from None


def request_class(max_depth: int) -> type[Request[Any, Any, Any]]:
    """A Litestar request class whose ``json()`` decodes into the handler's ``data`` type
    with :func:`decode_as` (or, untyped, :func:`decode_json` with ``max_depth``), and
    whose ``body()`` refuses an empty body where the handler's ``data`` is required
    (:class:`InvalidRequest` :data:`BODY_MISSING`; Litestar's own answer is
    "data: 'data'")."""
    decoders: dict[Any, msgspec.json.Decoder[Any]] = {}

    def decoder_for(request: Request[Any, Any, Any]) -> msgspec.json.Decoder[Any] | None:
        handler = request.scope.get("route_handler")
        field = getattr(handler, "parsed_data_field", None)
        if field is None:
            return None
        kind = field.annotation
        decoder = decoders.get(kind)
        if decoder is None:
            decoder = decoders[kind] = msgspec.json.Decoder(kind)
        return decoder

    def body_required(request: Request[Any, Any, Any]) -> bool:
        handler = request.scope.get("route_handler")
        field = getattr(handler, "parsed_data_field", None)
        return field is not None and not field.is_optional and not field.has_default

    class BoundedRequest(Request[Any, Any, Any]):
        async def body(self) -> bytes:
            body = await super().body()
            # Litestar would pass no ``data`` and refuse it as "data: 'data'"
            if not body and body_required(self):
                raise InvalidRequest(BODY_MISSING)
            return body

        async def json(self) -> Any:
            if self._json is Empty:
                state = self._connection_state
                if state.json is not Empty:
                    self._json = state.json
                else:
                    check_media_type(self.headers.get("content-type"))
                    body = await self.body() or b"null"
                    decoder = decoder_for(self)
                    self._json = state.json = (
                        decode_json(body, max_depth)
                        if decoder is None
                        else decode_as(body, decoder)
                    )
            return self._json

    return BoundedRequest
