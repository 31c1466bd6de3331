"""Who is calling: bearer tokens of the identity provider, verified on every request.

Both APIs trust exactly one thing about a caller: a JWT signed by the identity
provider with an asymmetric key published in its JWKS (ADR 0006). A token is accepted
only if its header's ``alg`` is one we allow (RS256, EdDSA) *and* the one of the JWKS
key named by its ``kid`` (so ``alg: none`` and an HS256 token "signed" with the public
key are refused), its signature holds, its ``iss`` and ``aud`` are ours and it has not
expired. ``sub`` is the rider's user id (an ``Identifier``: 1..64 of A-Z a-z 0-9 _ . : -);
``roles`` may hold ``rider`` and ``support``.

The JWKS is fetched lazily and cached; an unknown ``kid`` refetches it (the provider
rotated its keys), at most once per ``jwks_refresh_min_seconds`` so a flood of forged
kids cannot flood the provider. What the provider sends is bounded like any input (ADR
0025): a JWKS of at most ``JWKS_MAX_BYTES`` read within ``JWKS_FETCH_SECONDS``, at most
``JWKS_MAX_KEYS`` keys, each key used only with a ``kid`` of ``KID_PATTERN``, an allowed
algorithm, a public (never a private) key and an RSA modulus of ``RSA_BITS``; a token's
``kid``, ``exp``/``iat``/``nbf`` (0 to 2**63 - 1) and ``roles`` (``MAX_ROLES`` names of
at most ``MAX_ROLE_LENGTH``) likewise. A document that breaks a bound is a failed fetch
(the keys we had stay; with none, 503); a token that does is a 401. Verified tokens are
remembered until they expire (bounded LRU keyed by the token string), which saves the
signature check on every later request with the same token (docs/benchmarks.md,
"Identity"). It lives in ``shared/infra`` because it needs httpx and Litestar.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Annotated, Any

import httpx
import jwt
import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from litestar import Litestar, Request
from litestar.enums import ScopeType
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme
from litestar.types import ASGIApp, Receive, Scope, Send

from shared.errors import (
    DependencyUnavailable,
    DomainError,
    Forbidden,
    InvalidRequest,
    Unauthenticated,
)
from shared.infra.boundary import decode_as, is_identifier
from shared.infra.di import Slot
from shared.infra.openapi import schema_plugins, schema_router
from shared.infra.problems import domain_error_answer
from shared.settings import Settings

log = logging.getLogger("auth")

RIDER = "rider"
SUPPORT = "support"
ALGORITHMS = frozenset({"RS256", "EdDSA"})  # asymmetric only: never HS*, never none
MAX_TOKEN_LENGTH = 8_192
ROLES = frozenset({"rider", "support"})  # the roles we act on; a token's others are dropped
MAX_ROLES = 16
MAX_ROLE_LENGTH = 128
MAX_TIME = 2**63 - 1  # exp, iat, nbf: seconds since the epoch, 64-bit like our columns
# what the provider's JWKS may be: real ones are a few keys in a few KB
JWKS_MAX_BYTES = 65_536
JWKS_MAX_KEYS = 32
JWKS_FETCH_SECONDS = 5.0  # the whole fetch, however slowly the bytes come
RSA_BITS = range(2048, 4097)  # a bigger modulus costs every signature check more
RSA_MAX_EXPONENT_BITS = 256  # FIPS 186-4's bound; a huge exponent also slows checks
# a key id: base64/base64url (thumbprints), hex, UUIDs, names like "key-1"
KID_PATTERN = r"^[A-Za-z0-9._~:+/=-]{1,128}(?!\n)$"
_KID = re.compile(KID_PATTERN)


class _JwkMembers(msgspec.Struct, frozen=True):
    """The members of a JWK we read before PyJWT does, bounded; others are PyJWT's."""

    kty: Annotated[str, msgspec.Meta(max_length=16)]
    kid: Annotated[str, msgspec.Meta(pattern=KID_PATTERN)]
    alg: Annotated[str, msgspec.Meta(max_length=16)] | None = None
    use: Annotated[str, msgspec.Meta(max_length=16)] | None = None


class _JwkSet(msgspec.Struct, frozen=True):
    keys: Annotated[list[Any], msgspec.Meta(max_length=JWKS_MAX_KEYS)]  # non-objects: skipped


_JWK_SET = msgspec.json.Decoder(_JwkSet)


class JwksRefused(Exception):
    """The provider's JWKS answer breaks a bound (size, shape, no usable key)."""


def parse_jwks(body: bytes) -> dict[str, jwt.PyJWK]:
    """The usable verification keys of the JWKS document ``body``, by ``kid``.

    A key is usable when its ``kid`` is a :data:`KID_PATTERN`, its algorithm (``alg``,
    else PyJWT's guess from ``kty``) is one of :data:`ALGORITHMS`, its ``use`` is absent
    or ``sig``, and it is a public key (RSA: modulus of :data:`RSA_BITS`, exponent of at
    most :data:`RSA_MAX_EXPONENT_BITS` bits; Ed25519); other keys are skipped, as PyJWT
    skips the keys it cannot build.

    Raises:
        JwksRefused: ``body`` is not UTF-8 JSON of the JWKS shape (an object whose
            ``keys`` is a list of at most :data:`JWKS_MAX_KEYS` objects), nests too deep,
            or holds no usable key.
    """
    try:
        document = decode_as(body, _JWK_SET)
    except InvalidRequest as exc:
        raise JwksRefused(f"not a JWKS: {exc.detail[:200]}") from None
    keys: dict[str, jwt.PyJWK] = {}
    skipped: list[str] = []  # why, per key skipped (logged once, cut short)
    for member in document.keys:
        try:
            members = msgspec.convert(member, _JwkMembers)
        except msgspec.ValidationError as exc:
            skipped.append(str(exc))  # no kid of ours, a member of the wrong type
            continue
        if members.alg not in (None, *ALGORITHMS) or members.use not in (None, "sig"):
            # (PyJWT would build an "alg: none" key by raising NotImplementedError)
            skipped.append(f"not for signatures of {sorted(ALGORITHMS)}")
            continue
        try:
            key = jwt.PyJWK(member)
        except Exception as exc:  # PyJWT and cryptography raise assorted errors
            skipped.append(repr(exc))  # an unknown kty or crv, a broken key
            continue
        if key.algorithm_name not in ALGORITHMS or not _public_and_bounded(key.key):
            skipped.append(f"{key.algorithm_name}: not a public key of the allowed sizes")
            continue
        keys[members.kid] = key
    if skipped:
        log.warning("skipped %d unusable JWKS keys: %s", len(skipped), "; ".join(skipped)[:500])
    if not keys:
        raise JwksRefused("the JWKS holds no usable key")
    return keys


def _public_and_bounded(key: object) -> bool:
    if isinstance(key, RSAPublicKey):
        numbers = key.public_numbers()
        return key.key_size in RSA_BITS and numbers.e.bit_length() <= RSA_MAX_EXPONENT_BITS
    return isinstance(key, Ed25519PublicKey)


class Principal(msgspec.Struct, frozen=True):
    """The authenticated caller: ``sub`` (the user id) and its roles."""

    sub: str
    roles: frozenset[str]

    @property
    def is_support(self) -> bool:
        """An operator: may read any rider's data and force-end any ride."""
        return SUPPORT in self.roles

    def may_read(self, user_id: str) -> bool:
        """Whether this caller may see ``user_id``'s rides and summary."""
        return self.sub == user_id or self.is_support

    def require_support(self) -> None:
        """Refuse (Forbidden) unless this caller is an operator (docs/operator-api.md)."""
        if not self.is_support:
            raise Forbidden("only support may do this")

    def require_rider(self, user_id: str | None = None) -> None:
        """Refuse (Forbidden) unless this caller is a rider acting for itself.

        ``user_id``, when the request names one, must be ``sub``.
        """
        if RIDER not in self.roles:
            raise Forbidden("only a rider may do this")
        if user_id is not None and user_id != self.sub:
            raise Forbidden("a rider acts only for itself: user_id must be the token's sub")


class JwksCache:
    """The identity provider's public keys by ``kid``, fetched with ``client``.

    ``key(kid)`` answers from the cache; an unknown kid (or keys older than
    ``max_age_seconds``) refetches, at most once per ``min_refresh_seconds``.
    Raises :class:`Unauthenticated` for a kid the provider does not publish and
    :class:`DependencyUnavailable` when no key was ever fetched and the provider is down.
    """

    def __init__(
        self,
        url: str,
        client: httpx.AsyncClient,
        *,
        min_refresh_seconds: float,
        max_age_seconds: float,
    ) -> None:
        self._url = url
        self._client = client
        self._min_refresh = min_refresh_seconds
        self._max_age = max_age_seconds
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = 0.0  # monotonic time of the last successful fetch
        self._tried_at = -float("inf")  # monotonic time of the last attempt
        self._lock = asyncio.Lock()

    async def key(self, kid: str) -> jwt.PyJWK:
        """The public key named ``kid``."""
        key = self._keys.get(kid)
        if key is not None and time.monotonic() - self._fetched_at < self._max_age:
            return key
        async with self._lock:  # requests that miss wait for one fetch, not each their own
            key = self._keys.get(kid)
            stale = time.monotonic() - self._fetched_at >= self._max_age
            # with no key at all nothing can be verified: try again sooner
            pause = self._min_refresh if self._keys else min(self._min_refresh, 1.0)
            if (key is None or stale) and time.monotonic() - self._tried_at >= pause:
                await self._refresh()
                key = self._keys.get(kid)
        if key is None:
            if not self._keys:
                raise DependencyUnavailable("identity", "the identity provider's keys are unknown")
            raise Unauthenticated("the token was signed with an unknown key")
        return key

    async def warm(self) -> None:
        """Fetch the keys now (at startup), so the first requests need not; never raises."""
        async with self._lock:
            await self._refresh()

    async def _refresh(self) -> None:
        self._tried_at = time.monotonic()
        try:
            async with asyncio.timeout(JWKS_FETCH_SECONDS):
                body = await self._fetch()
            keys = parse_jwks(body)
        except (httpx.HTTPError, TimeoutError, JwksRefused) as exc:
            log.warning("could not fetch the JWKS from %s: %r", self._url, exc)
            return  # keep the keys we have
        self._keys = keys
        self._fetched_at = self._tried_at

    async def _fetch(self) -> bytes:
        """The JWKS document's bytes, at most :data:`JWKS_MAX_BYTES` of them, uncompressed
        (a compressed answer could unpack to any size)."""
        headers = {"accept": "application/json", "accept-encoding": "identity"}
        async with self._client.stream("GET", self._url, headers=headers) as response:
            response.raise_for_status()
            if response.headers.get("content-encoding", "identity").lower() != "identity":
                raise JwksRefused("the JWKS came compressed, which was not asked for")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > JWKS_MAX_BYTES:
                raise JwksRefused(f"the JWKS is larger than {JWKS_MAX_BYTES} bytes")
            body = bytearray()
            async for chunk in response.aiter_bytes():  # identity: as they came
                body += chunk
                if len(body) > JWKS_MAX_BYTES:
                    raise JwksRefused(f"the JWKS is larger than {JWKS_MAX_BYTES} bytes")
        return bytes(body)


class TokenVerifier:
    """Turns a bearer token into a :class:`Principal` or raises :class:`Unauthenticated`.

    Checks (ADR 0006): allowed asymmetric ``alg`` equal to the JWKS key's, signature,
    ``iss``, ``aud``, ``exp``/``iat`` (with ``leeway_seconds``), a bounded string
    ``sub`` and a list of string ``roles``. Verified tokens are cached until ``exp``
    (at most ``cache_size``, least recently used evicted first).
    """

    def __init__(
        self,
        jwks: JwksCache,
        *,
        issuer: str,
        audience: str,
        leeway_seconds: float,
        cache_size: int,
    ) -> None:
        self._jwks = jwks
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway_seconds
        self._cache_size = cache_size
        self._cache: OrderedDict[str, tuple[Principal, float]] = OrderedDict()

    async def warm(self) -> None:
        """Fetch the identity provider's keys ahead of the first request (never raises)."""
        await self._jwks.warm()

    async def verify(self, token: str) -> Principal:
        """The caller ``token`` (a compact JWS) proves; raises Unauthenticated."""
        cached = self._cache.get(token)
        if cached is not None:
            principal, expires = cached
            if time.time() < expires + self._leeway:
                self._cache.move_to_end(token)
                return principal
            del self._cache[token]
        principal, expires = await self._verify(token)
        if self._cache_size > 0:
            self._cache[token] = (principal, expires)
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return principal

    async def _verify(self, token: str) -> tuple[Principal, float]:
        if len(token) > MAX_TOKEN_LENGTH:
            raise Unauthenticated("the bearer token is too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated("the bearer token is not a JWT") from exc
        alg, kid = header.get("alg"), header.get("kid")
        if not isinstance(alg, str) or alg not in ALGORITHMS:  # a list or object: unhashable
            raise Unauthenticated(f"tokens signed with {alg!r} are not accepted")
        if not isinstance(kid, str) or not _KID.match(kid):
            raise Unauthenticated("the token names no key (kid)")
        key = await self._jwks.key(kid)
        if key.algorithm_name != alg:  # key confusion: the key decides the algorithm
            raise Unauthenticated("the token's alg does not match its key")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key.key,
                algorithms=[alg],
                audience=self._audience,
                issuer=self._issuer,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("the token has expired") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"the token is not valid: {exc}") from exc
        sub, roles = claims.get("sub"), claims.get("roles", [])
        # the rider id of every row, key and log line it reaches: the ids our boundaries take
        if not isinstance(sub, str) or not is_identifier(sub):
            raise Unauthenticated("the token's sub is not a user id")
        if (
            not isinstance(roles, list)
            or len(roles) > MAX_ROLES
            or not all(isinstance(r, str) and len(r) <= MAX_ROLE_LENGTH for r in roles)
        ):
            raise Unauthenticated(f"the token's roles are not a list of at most {MAX_ROLES} names")
        for name in ("exp", "iat", "nbf"):  # PyJWT took any integer (10**400 too)
            value = claims.get(name, 0)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise Unauthenticated(f"the token's {name} is not a number")
            if not 0 <= value <= MAX_TIME:
                raise Unauthenticated(f"the token's {name} is out of range")
        return Principal(sub, ROLES.intersection(roles)), float(claims["exp"])


def token_verifier(settings: Settings, client: httpx.AsyncClient) -> TokenVerifier:
    """The verifier configured by ``settings.identity`` (issuer, audience, JWKS, cache)."""
    identity = settings.identity
    jwks = JwksCache(
        f"{settings.identity_base_url}/.well-known/jwks.json",
        client,
        min_refresh_seconds=identity.jwks_refresh_min_seconds,
        max_age_seconds=identity.jwks_max_age_seconds,
    )
    return TokenVerifier(
        jwks,
        issuer=identity.issuer,
        audience=identity.audience,
        leeway_seconds=identity.leeway_seconds,
        cache_size=identity.cache_size,
    )


# health checks, and the operations console's static files and its addresses: they hold
# no data, and a browser must load them before it can sign in (query_api/ride_details.py)
_PUBLIC_PREFIX = ("/health/", "/console/", "/console-config")
# Litestar routes, and hands middleware, the path without its trailing slash: the
# console's own address "/console/" (README) arrives here as this
_CONSOLE_INDEX = "/console"


def bearer_auth(verifier: Slot[TokenVerifier]) -> Callable[[ASGIApp], ASGIApp]:
    """Litestar middleware: every HTTP request needs a valid bearer token but ``/health/*``
    and the operations console's files and addresses (``/console/*``, ``/console-config``:
    no data, and a browser loads them before it can sign in).

    Puts the :class:`Principal` in ``scope["user"]`` (``request.user``). Uses the
    :class:`TokenVerifier` the app's lifespan put in ``verifier``. Answers a missing or bad token
    itself with 401 ``unauthenticated`` (``WWW-Authenticate: Bearer``), and 503 when the
    identity provider's keys cannot be had, so middleware outside this one (request
    metrics) sees the real status.
    """

    def middleware(app: ASGIApp) -> ASGIApp:
        async def authenticate(scope: Scope, receive: Receive, send: Send) -> None:
            path = scope["path"]
            if scope["type"] == ScopeType.HTTP and not (
                path.startswith(_PUBLIC_PREFIX) or path == _CONSOLE_INDEX
            ):
                try:
                    scope["user"] = await verifier.get().verify(bearer_token(scope))
                except DomainError as exc:
                    request: Request[Any, Any, Any] = Request(scope, receive, send)
                    answer = domain_error_answer(request, exc).to_asgi_response(None, request)
                    await answer(scope, receive, send)
                    return
            await app(scope, receive, send)

        return authenticate

    return middleware


def bearer_token(scope: Scope) -> str:
    """The token of the request's (first) ``Authorization: Bearer`` header.

    Raises:
        Unauthenticated: no Authorization header, or not a bearer token.
    """
    for name, value in scope["headers"]:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("the Authorization header is not a bearer token")
            return token.strip()
    raise Unauthenticated("this endpoint needs a bearer token (Authorization: Bearer ...)")


def openapi_config(title: str) -> OpenAPIConfig:
    """The OpenAPI document of an API whose every operation needs a bearer token."""
    return OpenAPIConfig(
        title=title,
        version="1",
        components=Components(
            security_schemes={
                "bearer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT")
            }
        ),
        security=[{"bearer": []}],
        render_plugins=schema_plugins(),
        openapi_router=schema_router(),
    )


def document_public_operations(app: Litestar) -> None:
    """Give the operations :func:`bearer_auth` serves without a token (health checks, the
    console's configuration) ``security: []`` in ``app``'s OpenAPI document; otherwise
    they inherit the document's bearer requirement (:func:`openapi_config`).

    Call before the app serves its first request (the document is built once).
    """
    for path, item in (app.openapi_schema.paths or {}).items():
        if not path.startswith(_PUBLIC_PREFIX):
            continue
        for method in ("get", "put", "post", "delete", "options", "head", "patch", "trace"):
            operation = getattr(item, method)
            if operation is not None:
                operation.security = []


def principal_of(user: Any) -> Principal:
    """``request.user`` as the :class:`Principal` bearer_auth put there."""
    if not isinstance(user, Principal):  # a route bearer_auth was not applied to
        raise Unauthenticated("no authenticated caller")
    return user
