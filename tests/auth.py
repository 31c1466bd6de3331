"""Bearer tokens for tests, always from the identity provider's stub (``/auth/token``).

``Tokens`` fetches one token per (sub, roles) and keeps it for its lifetime.
``acting_rider`` gives a test client of either API the token of the rider each request
is for, so the tests written before sign-in keep reading as they did: an offer is asked
for by the rider it names, a start is made by the rider whose offer it is (remembered
from the offer answer), a finish or a read of an order by the rider who started it
(remembered from the start answer), a history or summary by its user. A request that
fits none of these goes as ``DEFAULT_RIDER`` (or, for an order not started through
this client, as support). A request that already has an ``Authorization`` header is
left alone: the cross-rider tests (tests/e2e/test_identity.py) set theirs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import httpx

from shared.infra.boundary import is_identifier
from shared.settings import Settings

DEFAULT_RIDER = "user-1"
SUPPORT = ("support",)
RIDER = ("rider",)


class Tokens:
    """Tokens from the identity stub at ``base_url``; ``admin_token`` unlocks its admin minting."""

    def __init__(self, base_url: str, admin_token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.admin_token = admin_token
        self._cache: dict[tuple[str, tuple[str, ...]], str] = {}

    def get(self, sub: str, roles: Sequence[str] = RIDER) -> str:
        """A token for ``sub`` with ``roles`` (fetched once per pair)."""
        key = (sub, tuple(sorted(roles)))
        if key not in self._cache:
            response = httpx.post(
                f"{self.base_url}/auth/token", json={"sub": sub, "roles": list(roles)}, timeout=10
            )
            response.raise_for_status()
            self._cache[key] = response.json()["access_token"]
        return self._cache[key]

    async def aget(self, sub: str, roles: Sequence[str] = RIDER) -> str:
        """As :meth:`get`, without blocking the event loop on a fetch."""
        key = (sub, tuple(sorted(roles)))
        if key not in self._cache:
            async with httpx.AsyncClient(timeout=10) as client:
                response = await client.post(
                    f"{self.base_url}/auth/token", json={"sub": sub, "roles": list(roles)}
                )
            response.raise_for_status()
            self._cache[key] = response.json()["access_token"]
        return self._cache[key]

    def headers(self, sub: str, roles: Sequence[str] = RIDER) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.get(sub, roles)}"}

    def minted(self, sub: str, **claims: Any) -> str:
        """A token with chosen ``expires_in``/``audience``/``issuer`` (the stub's admin route)."""
        response = httpx.post(
            f"{self.base_url}/admin/auth/token",
            json={"sub": sub, **claims},
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=10,
        )
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token


_RUN_TOKENS: dict[str, Tokens] = {}


def tokens_for(settings: Settings, admin_token: str = "") -> Tokens:
    """The run's :class:`Tokens` for the identity provider ``settings`` point at
    (``admin_token``, when given, unlocks :meth:`Tokens.minted`)."""
    base = settings.identity_base_url
    if base not in _RUN_TOKENS:
        _RUN_TOKENS[base] = Tokens(base, admin_token)
    if admin_token:
        _RUN_TOKENS[base].admin_token = admin_token
    return _RUN_TOKENS[base]


def _json(request: httpx.Request) -> Any:
    try:
        return json.loads(request.content or b"null")
    except (ValueError, UnicodeDecodeError, RecursionError):  # any bytes may be sent
        return None


def _rider_id(value: Any) -> str:
    # only a rider id (shared.infra.boundary.Identifier) can be a token's sub: "ü" cannot
    return value if isinstance(value, str) and is_identifier(value) else DEFAULT_RIDER


def acting_rider(client: httpx.AsyncClient, tokens: Tokens) -> None:
    """Install the request/response hooks described in the module docstring on ``client``."""
    owners: dict[str, str] = {}  # offer token or order id -> rider

    def who(request: httpx.Request) -> tuple[str, Sequence[str]]:
        path = request.url.path
        parts = path.strip("/").split("/")
        if request.method == "POST" and path == "/offers":
            body = _json(request)
            return _rider_id(body.get("user_id") if isinstance(body, dict) else None), RIDER
        if request.method == "POST" and path == "/orders":
            body = _json(request)
            token = body.get("offer_token") if isinstance(body, dict) else None
            return owners.get(token, DEFAULT_RIDER) if isinstance(
                token, str
            ) else DEFAULT_RIDER, RIDER
        if parts[0] == "users" and len(parts) >= 2:
            return _rider_id(parts[1]), RIDER
        if parts[0] == "orders" and len(parts) >= 2:
            owner = owners.get(parts[1])
            return (owner, RIDER) if owner else ("support-test", SUPPORT)
        return DEFAULT_RIDER, RIDER

    async def on_request(request: httpx.Request) -> None:
        if "authorization" not in request.headers:
            sub, roles = who(request)
            request.headers["Authorization"] = f"Bearer {await tokens.aget(sub, roles)}"

    async def on_response(response: httpx.Response) -> None:
        request = response.request
        if request.method != "POST" or response.status_code not in (200, 201):
            return
        if request.url.path not in ("/offers", "/orders"):
            return
        await response.aread()
        body = response.json()
        if isinstance(body, dict) and isinstance(body.get("user_id"), str):
            owners[body["token" if request.url.path == "/offers" else "id"]] = body["user_id"]

    client.event_hooks = {"request": [on_request], "response": [on_response]}
