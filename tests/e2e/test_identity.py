"""Sign-in against the running services (issue 9, ADR 0006).

Two command API processes and a query API process (``python -m ...`` subprocesses) in
development mode — no offer key configured, so they create and share one in Postgres —
with the run's stubs as identity provider. Every token comes from the identity stub
(or is forged here, for the refusals). Each test uses riders of its own.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac
import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from shared.domain import Offer, PricingInputs
from shared.ids import uuid7
from shared.offer_token import key_id
from shared.settings import Settings
from tests.auth import SUPPORT, Tokens
from tests.conftest import ADMIN, start_process, stop_process, wait_http
from tests.e2e.conftest import Ids
from tests.ports import free_port

# every key that was ever in the code (git log -p -S DEVELOPMENT_SIGNING_KEY)
KEYS_EVER_IN_CODE = ("dev-only-offer-signing-key-change-me",)
RATE_LIMIT = 3


@dataclasses.dataclass(frozen=True)
class Stack:
    command_a: str
    command_b: str
    query: str
    command_metrics: int
    settings: Settings


@pytest.fixture(scope="module")
def stack(base_settings: Settings, database: str, stubs: str) -> Iterator[Stack]:
    """Two command APIs and a query API in development mode (no offer key configured)."""
    settings = base_settings.replace(
        offers={"keys": "", "rate_limit": RATE_LIMIT, "rate_window_seconds": 60},
        identity={"jwks_refresh_min_seconds": 0.5},
        redis={"key_prefix": f"{base_settings.redis.key_prefix}identity:"},
    )
    ports = [free_port() for _ in range(4)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port, metrics in ((ports[0], ports[3]), (ports[1], 0)):
            run = settings.replace(serving={"command_port": port, "command_metrics_port": metrics})
            procs.append(start_process("command_api", run))
            wait_http(f"http://127.0.0.1:{port}/health/live", proc=procs[-1])
        procs.append(start_process("query_api", settings.replace(serving={"query_port": ports[2]})))
        wait_http(f"http://127.0.0.1:{ports[2]}/health/live", proc=procs[-1])
        yield Stack(
            command_a=f"http://127.0.0.1:{ports[0]}",
            command_b=f"http://127.0.0.1:{ports[1]}",
            query=f"http://127.0.0.1:{ports[2]}",
            command_metrics=ports[3],
            settings=settings,
        )
    finally:
        for proc in procs:
            stop_process(proc)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=10) as client:
        yield client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def offer_for(
    http: httpx.AsyncClient, base: str, tokens: Tokens, rider: str, scooter: str
) -> dict[str, Any]:
    response = await http.post(
        f"{base}/offers", json={"scooter_id": scooter}, headers=tokens.headers(rider)
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    assert body["user_id"] == rider
    return body


async def start_for(
    http: httpx.AsyncClient, base: str, tokens: Tokens, rider: str, offer_token: str
) -> dict[str, Any]:
    response = await http.post(
        f"{base}/orders", json={"offer_token": offer_token}, headers=tokens.headers(rider)
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def assert_problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.json()["code"] == code


# --- cross-rider attempts -----------------------------------------------------------------


async def test_every_cross_rider_attempt_is_refused(
    stack: Stack, http: httpx.AsyncClient, tokens: Tokens, ids: Ids
) -> None:
    alice, mallory = ids.rider(), ids.rider()
    a, b, q = stack.command_a, stack.command_b, stack.query
    as_mallory = tokens.headers(mallory)

    # an offer for someone else: refused
    response = await http.post(
        f"{a}/offers", json={"user_id": alice, "scooter_id": ids.scooter()}, headers=as_mallory
    )
    assert_problem(response, 403, "forbidden")

    offer = await offer_for(http, a, tokens, alice, ids.scooter())
    # starting from another rider's offer: refused, and the offer stays usable
    response = await http.post(
        f"{b}/orders", json={"offer_token": offer["token"]}, headers=as_mallory
    )
    assert_problem(response, 403, "forbidden")
    # priced on process A, started on process B: both found the same development key
    order = await start_for(http, b, tokens, alice, offer["token"])
    assert order["user_id"] == alice

    finish_url = f"{a}/orders/{order['id']}/finish"
    key = {"Idempotency-Key": "k-" + os.urandom(6).hex()}
    for headers in (as_mallory, {**as_mallory, **key}):
        assert_problem(
            await http.post(finish_url, json={}, headers=headers), 404, "order_not_found"
        )
    screen = await http.get(f"{q}/orders/{order['id']}", headers=as_mallory)
    assert_problem(screen, 404, "order_not_found")
    for path in (f"/users/{alice}/orders", f"/users/{alice}/summary"):
        assert_problem(await http.get(f"{q}{path}", headers=as_mallory), 403, "forbidden")

    # the owner still can, and the ride was not touched by any refusal
    as_alice = tokens.headers(alice)
    assert (await http.get(f"{q}/orders/{order['id']}", headers=as_alice)).json()[
        "status"
    ] == "active"
    finished = await http.post(finish_url, json={}, headers={**as_alice, **key})
    assert finished.status_code == 200, finished.text
    assert finished.json()["status"] in ("finished", "cancelled")
    # mallory replaying the owner's Idempotency-Key does not get the owner's answer
    replay = await http.post(finish_url, json={}, headers={**as_mallory, **key})
    assert_problem(replay, 404, "order_not_found")
    history = await http.get(f"{q}/users/{alice}/orders", headers=as_alice)
    assert [o["id"] for o in history.json()["items"]] == [order["id"]]
    assert (await http.get(f"{q}/users/{alice}/summary", headers=as_alice)).status_code == 200


# --- bad tokens ---------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"


def _claims(settings: Settings, sub: str) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": settings.identity.issuer,
        "aud": settings.identity.audience,
        "sub": sub,
        "roles": ["rider", "support"],
        "iat": now,
        "exp": now + 600,
    }


def bad_token(kind: str, stack: Stack, tokens: Tokens, rider: str) -> str | None:
    """A token of ``kind`` that must be refused (None: no Authorization header at all)."""
    settings = stack.settings
    if kind == "missing":
        return None
    if kind == "garbage":
        return "not-a-jwt"
    if kind == "expired":
        return tokens.minted(rider, expires_in=-120)
    if kind == "wrong_audience":
        return tokens.minted(rider, audience="someone-else")
    if kind == "wrong_issuer":
        return tokens.minted(rider, issuer="https://evil.example")
    jwks = httpx.get(f"{settings.identity_base_url}/.well-known/jwks.json", timeout=5).json()
    kid = jwks["keys"][-1]["kid"]
    if kind == "alg_none":
        return _unsigned({"alg": "none", "typ": "JWT", "kid": kid}, _claims(settings, rider)) + "."
    if kind == "hs256_with_public_key":
        public = jwt.PyJWK.from_dict(jwks["keys"][-1]).key
        pem = public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        head = _unsigned({"alg": "HS256", "typ": "JWT", "kid": kid}, _claims(settings, rider))
        return f"{head}.{_b64(hmac.new(pem, head.encode(), hashlib.sha256).digest())}"
    if kind == "unknown_kid":
        own = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return jwt.encode(_claims(settings, rider), own, "RS256", headers={"kid": "not-published"})
    if kind == "known_kid_other_key":
        own = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return jwt.encode(_claims(settings, rider), own, "RS256", headers={"kid": kid})
    if kind == "not_bearer":
        return "Basic dXNlcjpwYXNz"
    # a header's alg that is no string was looked up in a set: TypeError, a 500 (issue 8)
    if kind == "alg_list":
        return _unsigned({"alg": ["RS256"], "kid": kid}, _claims(settings, rider)) + ".x"
    if kind == "alg_object":
        return _unsigned({"alg": {"RS256": 1}, "kid": kid}, _claims(settings, rider)) + ".x"
    # validly signed, but its sub is no rider id (docs/boundaries.md): it would reach
    # Postgres, Redis keys and logs, and no screen of the query API could be read with it
    if kind == "sub_not_an_id":
        return tokens.minted("rider@example.com")
    raise AssertionError(kind)


BAD = [
    "missing",
    "garbage",
    "not_bearer",
    "expired",
    "wrong_audience",
    "wrong_issuer",
    "alg_none",
    "hs256_with_public_key",
    "unknown_kid",
    "known_kid_other_key",
    "alg_list",
    "alg_object",
    "sub_not_an_id",
]


@pytest.mark.parametrize("kind", BAD)
async def test_bad_tokens_are_401_on_both_apis(
    kind: str, stack: Stack, http: httpx.AsyncClient, tokens: Tokens, ids: Ids
) -> None:
    rider = ids.rider()
    token = bad_token(kind, stack, tokens, rider)
    if token is None:
        headers = {}
    elif kind == "not_bearer":
        headers = {"Authorization": token}
    else:
        headers = bearer(token)
    requests = [
        http.post(f"{stack.command_a}/offers", json={"scooter_id": "scooter-1"}, headers=headers),
        http.post(f"{stack.command_b}/orders", json={"offer_token": "x"}, headers=headers),
        http.post(f"{stack.command_a}/orders/{uuid7()}/finish", json={}, headers=headers),
        http.get(f"{stack.query}/orders/{uuid7()}", headers=headers),
        http.get(f"{stack.query}/users/{rider}/orders", headers=headers),
        http.get(f"{stack.query}/users/{rider}/summary", headers=headers),
        http.get(f"{stack.query}/schema", headers=headers),
    ]
    for request in requests:
        response = await request
        assert_problem(response, 401, "unauthenticated")
        assert response.headers["www-authenticate"] == "Bearer"


async def test_health_needs_no_token_and_metrics_are_internal(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    for base in (stack.command_a, stack.command_b, stack.query):
        assert (await http.get(f"{base}/health/live")).status_code == 200
        assert (await http.get(f"{base}/metrics")).status_code == 404  # no such public route
    internal = await http.get(f"http://127.0.0.1:{stack.command_metrics}/metrics")
    assert "http_request_duration_seconds" in internal.text


async def test_the_console_opens_at_its_readme_address_without_a_token(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    """README: the console is at /console/. Litestar routes (and hands the sign-in
    middleware) that path without its trailing slash, which the public prefix "/console/"
    missed: a browser got 401 there, and only /console/index.html opened."""
    for path in ("/console/", "/console", "/console/index.html"):
        page = await http.get(f"{stack.query}{path}")
        assert page.status_code == 200, (path, page.text)
        assert page.headers["content-type"].startswith("text/html")
        assert "operations console" in page.text
    # names no console file has are 404 before the file system sees them: NUL was
    # ValueError, a name past the file system's limit OSError, both a 500 without a token
    for name in ("%00", "index.html%00.js", "a" * 5000, "..%2Fapp.py", "%2E%2E", "x%0Ay"):
        answer = await http.get(f"{stack.query}/console/{name}")
        assert_problem(answer, 404, "not_found")
    # the rest still needs a token: the slash is no way around sign-in
    for path in ("/users/user-1/summary/", f"/orders/{uuid7()}/"):
        assert_problem(await http.get(f"{stack.query}{path}"), 401, "unauthenticated")


async def test_a_rotated_identity_key_is_picked_up(
    stack: Stack, http: httpx.AsyncClient, tokens: Tokens, ids: Ids
) -> None:
    """The provider rotates; a token with the new kid refetches the JWKS and passes."""
    rider = ids.rider()
    base = stack.settings.identity_base_url
    before = await http.post(f"{base}/admin/auth/rotate", headers=ADMIN)
    assert before.status_code == 200
    new_token = tokens.minted(rider)  # signed with the new key
    assert jwt.get_unverified_header(new_token)["kid"] == before.json()["kid"]
    time.sleep(stack.settings.identity.jwks_refresh_min_seconds)
    response = await http.get(f"{stack.query}/users/{rider}/summary", headers=bearer(new_token))
    assert_problem(response, 404, "user_not_found")  # authenticated: the user has no rides


# --- support ------------------------------------------------------------------------------


async def test_support_reads_and_force_ends_any_ride_with_the_actor_recorded(
    stack: Stack, http: httpx.AsyncClient, tokens: Tokens, ids: Ids, db: asyncpg.Pool
) -> None:
    rider, operator = ids.rider(), f"support-{os.urandom(3).hex()}"
    as_support = tokens.headers(operator, SUPPORT)
    offer = await offer_for(http, stack.command_a, tokens, rider, ids.scooter())
    order = await start_for(http, stack.command_a, tokens, rider, offer["token"])

    screen = await http.get(f"{stack.query}/orders/{order['id']}", headers=as_support)
    assert screen.status_code == 200
    assert screen.json()["user_id"] == rider
    history = await http.get(f"{stack.query}/users/{rider}/orders", headers=as_support)
    assert [o["id"] for o in history.json()["items"]] == [order["id"]]
    summary = await http.get(f"{stack.query}/users/{rider}/summary", headers=as_support)
    assert summary.status_code == 200

    # support may not ride on the rider's behalf
    as_support_offer = await http.post(
        f"{stack.command_a}/offers",
        json={"user_id": rider, "scooter_id": ids.scooter()},
        headers=as_support,
    )
    assert_problem(as_support_offer, 403, "forbidden")

    ended = await http.post(
        f"{stack.command_b}/orders/{order['id']}/finish", json={}, headers=as_support
    )
    assert ended.status_code == 200, ended.text
    assert ended.json()["status"] in ("finished", "cancelled")
    actions = await db.fetch(
        "SELECT action, actor, actor_roles FROM order_actions WHERE order_id = $1",
        uuid.UUID(order["id"]),
    )
    assert [(r["action"], r["actor"], r["actor_roles"]) for r in actions] == [
        ("force_end", operator, ["support"])
    ]
    # a second force-end changes nothing and records nothing
    again = await http.post(
        f"{stack.command_a}/orders/{order['id']}/finish", json={}, headers=as_support
    )
    assert again.status_code == 200
    count = await db.fetchval(
        "SELECT count(*) FROM order_actions WHERE order_id = $1",
        uuid.UUID(order["id"]),
    )
    assert count == 1


async def test_a_ride_its_rider_finishes_records_no_action(
    stack: Stack, http: httpx.AsyncClient, tokens: Tokens, ids: Ids, db: asyncpg.Pool
) -> None:
    rider = ids.rider()
    offer = await offer_for(http, stack.command_a, tokens, rider, ids.scooter())
    order = await start_for(http, stack.command_a, tokens, rider, offer["token"])
    finished = await http.post(
        f"{stack.command_a}/orders/{order['id']}/finish", json={}, headers=tokens.headers(rider)
    )
    assert finished.status_code == 200
    count = await db.fetchval(
        "SELECT count(*) FROM order_actions WHERE order_id = $1",
        uuid.UUID(order["id"]),
    )
    assert count == 0


# --- rate limit ---------------------------------------------------------------------------


async def test_offer_rate_limit_is_shared_by_two_processes(
    stack: Stack, http: httpx.AsyncClient, tokens: Tokens, ids: Ids
) -> None:
    rider, other = ids.rider(), ids.rider()
    scooter = ids.scooter()
    answers = []
    for i in range(RATE_LIMIT + 1):
        base = stack.command_a if i % 2 == 0 else stack.command_b
        answers.append(
            await http.post(
                f"{base}/offers", json={"scooter_id": scooter}, headers=tokens.headers(rider)
            )
        )
    assert [a.status_code for a in answers[:RATE_LIMIT]] == [201] * RATE_LIMIT
    limited = answers[RATE_LIMIT]
    assert_problem(limited, 429, "rate_limited")
    assert 1 <= int(limited.headers["retry-after"]) <= 61
    # on the other process too, and not for another rider
    again = await http.post(
        f"{stack.command_a}/offers", json={"scooter_id": scooter}, headers=tokens.headers(rider)
    )
    assert again.status_code == 429
    await offer_for(http, stack.command_b, tokens, other, scooter)


# --- offer keys ---------------------------------------------------------------------------


def _offer(rider: str, scooter: str) -> Offer:
    now = datetime.now(UTC)
    return Offer(
        id=uuid7(),
        user_id=rider,
        scooter_id=scooter,
        zone_id="zone-1",
        price_per_minute=0,
        price_unlock=0,
        deposit=0,
        created_at=now,
        expires_at=now + timedelta(days=3650),
        inputs=PricingInputs(
            charge=100,
            zone_price_per_minute=0,
            zone_price_unlock=0,
            zone_default_deposit=0,
            surge=0.01,
            low_charge_discount=1.0,
            has_subscription=True,
            trusted=True,
            total_debt=0,
            free_ride_seconds=5,
            zone_source="live",
            user_source="live",
            configs_source="live",
        ),
    )


def forged_tokens(offer: Offer) -> list[str]:
    """The offer as every key ever in the code would have made it (old and new format)."""
    payload = msgspec.msgpack.encode(offer)
    forged = []
    for text in KEYS_EVER_IN_CODE:
        secret = text.encode()
        old_kid = _b64(hashlib.sha256(secret).digest()[:6])
        head = f"v1.{old_kid}.{_b64(payload)}"  # the format and MAC of the first offer token
        forged.append(f"{head}.{_b64(hmac.new(secret, head.encode(), hashlib.sha256).digest())}")
        for key in (hashlib.sha256(secret).digest(), secret.ljust(32, b"\0")[:32]):
            for kid in (key_id(key), old_kid):
                nonce = os.urandom(12)
                sealed = AESGCM(key).encrypt(nonce, payload, f"v2.{kid}".encode())
                forged.append(f"v2.{kid}.{_b64(nonce + sealed)}")
    return forged


async def test_a_development_stack_refuses_every_key_ever_in_the_code(
    stack: Stack, http: httpx.AsyncClient, tokens: Tokens, ids: Ids, db: asyncpg.Pool
) -> None:
    rider = ids.rider()
    for token in forged_tokens(_offer(rider, ids.scooter())):
        for base in (stack.command_a, stack.command_b):
            response = await http.post(
                f"{base}/orders", json={"offer_token": token}, headers=tokens.headers(rider)
            )
            assert_problem(response, 422, "offer_invalid")
    # the key the stack made for itself is random, none of those
    secrets = [bytes(r["secret"]) for r in await db.fetch("SELECT secret FROM offer_keys")]
    assert len(secrets) == 1
    for text in KEYS_EVER_IN_CODE:
        assert secrets[0] not in (text.encode(), hashlib.sha256(text.encode()).digest())


async def test_no_rider_flag_is_readable_from_an_offer_token(
    stack: Stack, http: httpx.AsyncClient, tokens: Tokens, ids: Ids
) -> None:
    rider = ids.rider(trusted=True)
    offer = await offer_for(http, stack.command_a, tokens, rider, ids.scooter())
    raw = b"".join(
        base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        for part in offer["token"].split(".")
        if part
        and set(part) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    )
    for flag in (b"trusted", b"has_subscription", b"total_debt", b"debt", rider.encode()):
        assert flag not in raw
        assert flag not in offer["token"].encode()
    for start in range(len(raw)):  # no decodable offer (or its inputs) at any offset
        with pytest.raises((msgspec.DecodeError, ValueError)):
            msgspec.msgpack.decode(raw[start:], type=Offer)


async def test_openapi_documents_the_bearer_scheme(
    stack: Stack, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    for base in (stack.command_a, stack.query):
        schema = await http.get(f"{base}/schema/openapi.json", headers=tokens.headers("user-1"))
        assert schema.status_code == 200, schema.text
        document = schema.json()
        assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
        assert document["security"] == [{"bearer": []}]


async def test_openapi_security_is_what_sign_in_does(
    stack: Stack, http: httpx.AsyncClient, tokens: Tokens
) -> None:
    """Every operation lists bearer security and refuses a caller without a token (401),
    except the health checks (and the console's configuration), which list none
    (``security: []``) and answer without one."""
    for base in (stack.command_a, stack.query):
        schema = await http.get(f"{base}/schema/openapi.json", headers=tokens.headers("user-1"))
        document = schema.json()
        public = []
        for path, item in document["paths"].items():
            url = base + re.sub(r"\{[^}]+\}", "x", path)
            for method in ("get", "post", "put", "patch", "delete"):
                if method not in item:
                    continue
                security = item[method].get("security", document["security"])
                answer = await http.request(method.upper(), url)
                if path.startswith(("/health/", "/console-config")):
                    assert item[method]["security"] == [], (base, method, path)
                    assert answer.status_code != 401, (base, method, path)
                    public.append(path)
                else:
                    assert security == [{"bearer": []}], (base, method, path)
                    assert answer.status_code == 401, (base, method, path, answer.text)
        assert {"/health/live", "/health/ready"} <= set(public), public
