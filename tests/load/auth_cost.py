"""``python -m tests.load.auth_cost``: what verifying a bearer token costs per request.

In one process, with the identity stub's key pair (``stubs.identity``) and its JWKS
served to ``shared.infra.auth.TokenVerifier`` through an in-memory transport: the first
verification of a token (header, key lookup, RS256 signature, claims) against a cached
one (the LRU hit every later request of the same token takes). Prints microseconds per
verification; the numbers and the command are in docs/benchmarks.md ("Identity").
"""

from __future__ import annotations

import asyncio
import sys
import time

import httpx

from shared.infra.auth import JwksCache, TokenVerifier
from shared.settings import Settings
from stubs.identity import IdentityProvider


async def measure(tokens: int = 2_000, repeats: int = 20_000) -> dict[str, float]:
    settings = Settings()
    provider = IdentityProvider(
        issuer=settings.identity.issuer, audience=settings.identity.audience, ttl_seconds=3_600
    )
    jwks = provider.jwks()
    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=jwks))
    async with httpx.AsyncClient(transport=transport) as client:
        cache = JwksCache(
            "http://identity/.well-known/jwks.json",
            client,
            min_refresh_seconds=10,
            max_age_seconds=300,
        )

        def verifier(cache_size: int) -> TokenVerifier:
            return TokenVerifier(
                cache,
                issuer=settings.identity.issuer,
                audience=settings.identity.audience,
                leeway_seconds=5,
                cache_size=cache_size,
            )

        minted = [provider.issue(f"user-{i}", ["rider"]).access_token for i in range(tokens)]
        uncached, cached = verifier(0), verifier(10_000)
        await uncached.verify(minted[0])  # fetch the JWKS once
        started = time.perf_counter()
        for token in minted:
            await uncached.verify(token)
        full = (time.perf_counter() - started) / tokens
        for token in minted:
            await cached.verify(token)
        started = time.perf_counter()
        for i in range(repeats):
            await cached.verify(minted[i % tokens])
        hit = (time.perf_counter() - started) / repeats
    return {"uncached_us": round(full * 1e6, 1), "cached_us": round(hit * 1e6, 2)}


def main() -> int:
    result = asyncio.run(measure())
    print(
        f"verify, RS256 signature checked: {result['uncached_us']} µs/request; "
        f"cached token: {result['cached_us']} µs/request"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
