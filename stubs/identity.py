"""The identity provider's stub: issues the bearer tokens both APIs verify (ADR 0006).

The real provider is the company's OIDC provider; this stub keeps its contract:

- ``POST /auth/token`` with ``{"sub": "user-1", "roles": ["rider"]}`` answers
  ``{"access_token", "token_type": "Bearer", "expires_in"}``: an RS256 JWT with
  ``iss``, ``aud``, ``sub``, ``roles``, ``iat``, ``exp`` and a ``kid`` header;
- ``GET /.well-known/jwks.json``: the public keys (RFC 7517).

It authenticates nobody (a stub): whoever asks gets a token for the ``sub`` named.
Ours, behind the stubs' admin token: ``POST /admin/auth/token`` also takes
``expires_in``, ``audience`` and ``issuer`` (tests mint expired or foreign tokens), and
``POST /admin/auth/rotate`` adds a new signing key (the old one stays published).
"""

from __future__ import annotations

import secrets
import time
from typing import Annotated, Any, Literal

import jwt
import msgspec
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

BEARER = "Bearer"  # RFC 6750 token type, not a secret
Role = Literal["rider", "support"]
# (?!\n): Python's "$" also matches before a final line break (shared.infra.boundary)
Sub = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[\w.:@-]+(?!\n)$")]
Roles = Annotated[list[Role], msgspec.Meta(max_length=2)]


class TokenRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``POST /auth/token``."""

    sub: Sub
    roles: Roles = msgspec.field(default_factory=lambda: ["rider"])


class AdminTokenRequest(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Body of ``POST /admin/auth/token``: a token with chosen lifetime, audience, issuer."""

    sub: Sub
    roles: Roles = msgspec.field(default_factory=lambda: ["rider"])
    expires_in: Annotated[int, msgspec.Meta(ge=-86_400, le=86_400)] | None = None
    audience: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    issuer: Annotated[str, msgspec.Meta(max_length=200)] | None = None


class TokenAnswer(msgspec.Struct, frozen=True):
    access_token: str
    token_type: str
    expires_in: int


class IdentityProvider:
    """Signing keys (RSA 2048, newest signs) and the claims of the tokens it issues."""

    def __init__(self, *, issuer: str, audience: str, ttl_seconds: int) -> None:
        self.issuer = issuer
        self.audience = audience
        self.ttl_seconds = ttl_seconds
        self._keys: list[tuple[str, rsa.RSAPrivateKey]] = []
        self.rotate()

    def rotate(self) -> str:
        """Add a new signing key; returns its kid. Earlier keys stay in the JWKS."""
        kid = secrets.token_urlsafe(8)
        self._keys.append((kid, rsa.generate_private_key(public_exponent=65537, key_size=2048)))
        return kid

    def issue(
        self,
        sub: str,
        roles: list[str],
        *,
        expires_in: int | None = None,
        audience: str | None = None,
        issuer: str | None = None,
    ) -> TokenAnswer:
        """A signed token for ``sub`` with ``roles`` (default lifetime ``ttl_seconds``)."""
        kid, key = self._keys[-1]
        lifetime = self.ttl_seconds if expires_in is None else expires_in
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": issuer or self.issuer,
            "aud": audience or self.audience,
            "sub": sub,
            "roles": sorted(set(roles)),
            "iat": now,
            "exp": now + lifetime,
        }
        token = jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})
        return TokenAnswer(access_token=token, token_type=BEARER, expires_in=lifetime)

    def jwks(self) -> dict[str, Any]:
        """The public keys as a JWK Set."""
        keys = []
        for kid, key in self._keys:
            jwk: dict[str, Any] = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
            keys.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
        return {"keys": keys}
