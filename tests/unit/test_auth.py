"""Bearer-token verification (shared/infra/auth.py) as pure logic: the JWKS is served by an
in-memory transport; the identity stub's own key pair signs. Against the running
services the same refusals are in tests/e2e/test_identity.py."""

from __future__ import annotations

import asyncio
import gzip
import json
from collections.abc import AsyncIterator

import httpx
import jwt
import pytest

from shared.errors import DependencyUnavailable, Forbidden, Unauthenticated
from shared.infra import auth
from shared.infra.auth import JWKS_MAX_BYTES, JwksCache, Principal, TokenVerifier
from stubs.identity import IdentityProvider

ISS, AUD = "https://identity.test", "api.test"


class Jwks:
    """A JWKS endpoint that counts its fetches and can be made to fail."""

    def __init__(self, provider: IdentityProvider) -> None:
        self.provider = provider
        self.fetches = 0
        self.down = False

    async def handle(self, request: httpx.Request) -> httpx.Response:
        self.fetches += 1
        await asyncio.sleep(0.01)  # a fetch takes a while: requests pile up behind it
        if self.down:
            return httpx.Response(503)
        return httpx.Response(200, json=self.provider.jwks())


def verifier(jwks: Jwks, min_refresh: float = 60.0, cache_size: int = 100) -> TokenVerifier:
    client = httpx.AsyncClient(transport=httpx.MockTransport(jwks.handle))
    cache = JwksCache(
        "http://idp/.well-known/jwks.json",
        client,
        min_refresh_seconds=min_refresh,
        max_age_seconds=300,
    )
    return TokenVerifier(cache, issuer=ISS, audience=AUD, leeway_seconds=0, cache_size=cache_size)


@pytest.fixture
def provider() -> IdentityProvider:
    return IdentityProvider(issuer=ISS, audience=AUD, ttl_seconds=600)


async def test_concurrent_first_requests_share_one_fetch(provider: IdentityProvider) -> None:
    jwks = Jwks(provider)
    check = verifier(jwks)
    tokens = [provider.issue(f"user-{i}", ["rider"]).access_token for i in range(20)]
    principals = await asyncio.gather(*(check.verify(t) for t in tokens))
    assert [p.sub for p in principals] == [f"user-{i}" for i in range(20)]
    assert jwks.fetches == 1


async def test_a_rotated_key_is_fetched_when_its_kid_appears(
    provider: IdentityProvider,
) -> None:
    jwks = Jwks(provider)
    check = verifier(jwks, min_refresh=0.0)
    await check.verify(provider.issue("user-1", ["rider"]).access_token)
    provider.rotate()  # the provider rotates: a new kid appears
    rotated = provider.issue("user-2", ["rider"]).access_token
    assert (await check.verify(rotated)).sub == "user-2"
    assert jwks.fetches == 2


async def test_a_flood_of_unknown_kids_does_not_flood_the_provider(
    provider: IdentityProvider,
) -> None:
    jwks = Jwks(provider)
    check = verifier(jwks, min_refresh=60.0)
    await check.verify(provider.issue("user-1", ["rider"]).access_token)
    forged = [
        jwt.encode({"sub": "x"}, "k" * 32, algorithm="HS256", headers={"kid": f"kid-{i}"})
        for i in range(10)
    ]
    for token in forged:
        with pytest.raises(Unauthenticated):
            await check.verify(token)
    own = IdentityProvider(issuer=ISS, audience=AUD, ttl_seconds=600)  # kids nobody publishes
    for i in range(10):
        with pytest.raises(Unauthenticated, match="unknown key"):
            await check.verify(own.issue(f"user-{i}", ["rider"]).access_token)
    assert jwks.fetches == 1  # within the refresh interval: no refetch at all


async def test_provider_down_before_any_key_is_503_and_recovers(
    provider: IdentityProvider,
) -> None:
    jwks = Jwks(provider)
    jwks.down = True
    check = verifier(jwks, min_refresh=0.0)
    token = provider.issue("user-1", ["rider"]).access_token
    with pytest.raises(DependencyUnavailable):
        await check.verify(token)
    jwks.down = False
    assert (await check.verify(token)).sub == "user-1"


async def test_verified_tokens_are_cached_until_they_expire(provider: IdentityProvider) -> None:
    jwks = Jwks(provider)
    check = verifier(jwks, cache_size=2)
    tokens = [provider.issue(f"user-{i}", ["rider"]).access_token for i in range(3)]
    for token in tokens:
        await check.verify(token)
    assert len(check._cache) == 2  # bounded: the least recently used left
    expired = provider.issue("user-9", ["rider"], expires_in=-1).access_token
    with pytest.raises(Unauthenticated, match="expired"):
        await check.verify(expired)


@pytest.mark.parametrize(
    ("audience", "issuer", "message"),
    [("other", None, "(?i)audience"), (None, "https://evil", "(?i)issuer")],
)
async def test_foreign_claims_are_refused(
    provider: IdentityProvider, audience: str | None, issuer: str | None, message: str
) -> None:
    check = verifier(Jwks(provider))
    token = provider.issue("user-1", ["rider"], audience=audience, issuer=issuer).access_token
    with pytest.raises(Unauthenticated, match=message):
        await check.verify(token)


def test_principal_rules() -> None:
    rider = Principal("user-1", frozenset({"rider"}))
    support = Principal("op-1", frozenset({"support"}))
    assert rider.may_read("user-1")
    assert not rider.may_read("user-2")
    assert support.may_read("user-2")
    rider.require_rider("user-1")
    with pytest.raises(Forbidden):
        rider.require_rider("user-2")
    with pytest.raises(Forbidden):
        support.require_rider()


class Endless(httpx.AsyncByteStream):
    """A JWKS answer that never ends: ``chunks`` counts what was read of it."""

    def __init__(self, pause: float = 0.0) -> None:
        self.chunks = 0
        self.pause = pause

    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"keys": [], "pad": "'
        while True:
            self.chunks += 1
            if self.pause:
                await asyncio.sleep(self.pause)
            yield b"x" * 1024


def endless_verifier(stream: Endless) -> TokenVerifier:
    async def handle(request: httpx.Request) -> httpx.Response:
        assert request.headers["accept-encoding"] == "identity"  # no compression bombs
        return httpx.Response(200, stream=stream)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    cache = JwksCache(
        "http://idp/.well-known/jwks.json", client, min_refresh_seconds=0, max_age_seconds=300
    )
    return TokenVerifier(cache, issuer=ISS, audience=AUD, leeway_seconds=0, cache_size=1)


async def test_an_endless_jwks_is_read_up_to_its_bound_only(provider: IdentityProvider) -> None:
    stream = Endless()
    with pytest.raises(DependencyUnavailable):
        await endless_verifier(stream).verify(provider.issue("user-1", ["rider"]).access_token)
    assert stream.chunks == JWKS_MAX_BYTES // 1024  # then it stopped reading (+21 bytes)


async def test_a_jwks_that_trickles_in_is_given_up_after_the_fetch_deadline(
    provider: IdentityProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A byte every now and then never trips a read timeout; the whole fetch has one."""
    monkeypatch.setattr(auth, "JWKS_FETCH_SECONDS", 0.3)
    stream = Endless(pause=0.05)
    with pytest.raises(DependencyUnavailable):
        await endless_verifier(stream).verify(provider.issue("user-1", ["rider"]).access_token)
    assert 3 <= stream.chunks <= 10


async def test_a_compressed_jwks_is_refused_unread(provider: IdentityProvider) -> None:
    """Asked for without compression; compressed anyway, its size once unpacked could be
    anything (10 MB of "x" pack into 10 KB), so even a good document is not unpacked."""

    async def handle(request: httpx.Request) -> httpx.Response:
        packed = gzip.compress(json.dumps(provider.jwks()).encode())
        return httpx.Response(200, content=packed, headers={"content-encoding": "gzip"})

    client = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    cache = JwksCache("http://idp/jwks", client, min_refresh_seconds=0, max_age_seconds=300)
    check = TokenVerifier(cache, issuer=ISS, audience=AUD, leeway_seconds=0, cache_size=1)
    with pytest.raises(DependencyUnavailable):
        await check.verify(provider.issue("user-1", ["rider"]).access_token)
