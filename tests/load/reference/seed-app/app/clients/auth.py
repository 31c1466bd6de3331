# mypy: ignore-errors
# (a program of its own, with its own packages: see tests/load/reference/__init__.py)
"""Bearer tokens of the identity provider: RS256 JWTs checked against its JWKS (PyJWT).

The JWKS is fetched at start-up and again when a token names an unknown ``kid``. Every
request's token is verified (signature, ``iss``, ``aud``, ``exp``) unless
``AUTH_CACHE=1``, which remembers verified tokens until they expire.
"""

from __future__ import annotations

import time
from typing import Annotated, Any

import httpx
import jwt
from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.settings import settings

bearer = HTTPBearer(auto_error=False)


class JwksKeys:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.keys: dict[str, jwt.PyJWK] = {}
        self.fetched_at = 0.0
        self.verified: dict[str, tuple[str, float]] = {}  # AUTH_CACHE: token -> (sub, exp)

    async def refresh(self) -> None:
        response = await self.http.get(settings.jwks_url)
        response.raise_for_status()
        jwks = jwt.PyJWKSet.from_dict(response.json())
        self.keys = {key.key_id: key for key in jwks.keys if key.key_id}
        self.fetched_at = time.monotonic()

    async def key(self, kid: str) -> jwt.PyJWK:
        if kid not in self.keys and time.monotonic() - self.fetched_at > 10:
            await self.refresh()
        if kid not in self.keys:
            raise HTTPException(401, "unknown signing key")
        return self.keys[kid]

    async def verify(self, token: str) -> str:
        if settings.auth_cache:
            known = self.verified.get(token)
            if known is not None and time.time() < known[1]:
                return known[0]
        try:
            header = jwt.get_unverified_header(token)
            key = await self.key(str(header.get("kid", "")))
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=["RS256"],
                audience=settings.auth_audience,
                issuer=settings.auth_issuer,
                options={"require": ["exp", "iat", "sub"]},
            )
        except jwt.InvalidTokenError as exc:
            raise HTTPException(401, f"invalid token: {exc}") from exc
        if "rider" not in claims.get("roles", []):
            raise HTTPException(403, "only a rider may do this")
        sub = str(claims["sub"])
        if settings.auth_cache:
            self.verified[token] = (sub, float(claims["exp"]))
        return sub


async def current_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The rider's user id from the bearer token; 401 without a valid one."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(401, "a bearer token is required")
    keys: JwksKeys = request.app.state.jwks
    return await keys.verify(credentials.credentials)
