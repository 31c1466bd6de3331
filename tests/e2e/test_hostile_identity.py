"""A broken or hostile identity provider (ADR 0025): whatever its JWKS document or the
tokens it signs hold, the answer is 503 ``dependency_unavailable`` (no usable key) or
401 (a bad token), never a 500, and nothing it sends is kept unbounded.

The provider is a private ``python -m stubs`` process whose ``identity`` faults make its
JWKS any document (``answer_fields``: members replaced; ``answer_body``: any text). The
verifier (shared/infra/auth.py) talks to it over a real socket; the last test points a
query API process at it.
"""

from __future__ import annotations

import asyncio
import base64
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from jwt.algorithms import OKPAlgorithm, RSAAlgorithm

from shared.errors import DependencyUnavailable, Unauthenticated
from shared.infra.auth import JWKS_MAX_BYTES, JWKS_MAX_KEYS, JwksCache, TokenVerifier
from shared.settings import Settings
from stubs import StubSettings
from tests.conftest import ADMIN, start_process, stop_process, wait_http
from tests.ports import free_port

ISS, AUD = "https://identity.test", "api.test"
OURS = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # "the provider's"


def jwk(key: Any, **members: Any) -> dict[str, Any]:
    """The public JWK of ``key`` (RSA) with ``members`` added or replaced."""
    return {
        **RSAAlgorithm.to_jwk(key.public_key(), as_dict=True),
        "kid": "k1",
        "alg": "RS256",
        "use": "sig",
        **members,
    }


def sign(claims: dict[str, Any], kid: str = "k1", key: Any = OURS, alg: str = "RS256") -> str:
    now = int(time.time())
    base = {"iss": ISS, "aud": AUD, "sub": "user-1", "roles": ["rider"], "iat": now}
    return jwt.encode(
        {**base, "exp": now + 600, **claims}, key, algorithm=alg, headers={"kid": kid}
    )


@pytest.fixture(scope="module")
def idp(base_settings: Settings, stub_settings: StubSettings) -> Iterator[str]:
    """A stubs process of its own: its identity faults touch no other test."""
    port = free_port()
    settings = base_settings.replace(identity={"issuer": ISS, "audience": AUD})
    proc = start_process("stubs", settings, stub_settings.replace(port=port).to_env())
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health/live", proc=proc)
        yield url
    finally:
        stop_process(proc)


@pytest.fixture
async def admin(idp: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=idp, headers=ADMIN, timeout=10) as client:
        yield client
        await publish(client, answer_fields={}, answer_body="", outage=False)


async def publish(admin: httpx.AsyncClient, **fault: Any) -> None:
    (await admin.post("/admin/faults", json={"service": "identity", **fault})).raise_for_status()


@pytest.fixture
async def verifier(idp: str) -> AsyncIterator[TokenVerifier]:
    """A fresh verifier (no key yet) over a real connection to the provider."""
    async with httpx.AsyncClient(timeout=2) as client:
        jwks = JwksCache(
            f"{idp}/.well-known/jwks.json", client, min_refresh_seconds=0, max_age_seconds=300
        )
        yield TokenVerifier(jwks, issuer=ISS, audience=AUD, leeway_seconds=0, cache_size=10)


SMALL = rsa.generate_private_key(public_exponent=65537, key_size=1024)
HUGE = rsa.generate_private_key(public_exponent=65537, key_size=4096 + 1024)
ED = ed25519.Ed25519PrivateKey.generate()
PRIVATE = {  # the whole private key, "d" and all, published by mistake
    **RSAAlgorithm.to_jwk(OURS, as_dict=True),
    "kid": "k1",
    "alg": "RS256",
    "use": "sig",
}
HOSTILE_DOCUMENTS: dict[str, dict[str, Any]] = {
    "too many keys": {"answer_fields": {"keys": [jwk(OURS)] * (JWKS_MAX_KEYS + 1)}},
    "too large": {"answer_fields": {"keys": [jwk(OURS)], "pad": "x" * (JWKS_MAX_BYTES + 1)}},
    "kid too long": {"answer_fields": {"keys": [jwk(OURS, kid="k" * 129)]}},
    "kid with a line break": {"answer_fields": {"keys": [jwk(OURS, kid="k1\n")]}},
    "kid a number": {"answer_fields": {"keys": [jwk(OURS, kid=1)]}},
    "kid a list": {"answer_fields": {"keys": [jwk(OURS, kid=["k1"])]}},
    "alg a list": {"answer_fields": {"keys": [jwk(OURS, alg=["RS256"])]}},
    "alg none": {"answer_fields": {"keys": [jwk(OURS, alg="none")]}},
    "alg HS256 secret": {
        "answer_fields": {"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "k1", "alg": "HS256"}]}
    },
    "use enc": {"answer_fields": {"keys": [jwk(OURS, use="enc")]}},
    "use a list": {"answer_fields": {"keys": [jwk(OURS, use=["sig"])]}},
    "kty a list": {"answer_fields": {"keys": [jwk(OURS, kty=["RSA"])]}},
    "rsa 1024 bits": {"answer_fields": {"keys": [jwk(SMALL)]}},
    "rsa 5120 bits": {"answer_fields": {"keys": [jwk(HUGE)]}},
    "rsa huge exponent": {
        "answer_fields": {
            "keys": [jwk(OURS, e=base64.urlsafe_b64encode(b"\x01" * 64).decode().rstrip("="))]
        }
    },
    "rsa modulus not base64": {"answer_fields": {"keys": [jwk(OURS, n="!!!")]}},
    "a private key": {"answer_fields": {"keys": [PRIVATE]}},
    "keys a string": {"answer_fields": {"keys": "abc"}},
    "keys a number": {"answer_fields": {"keys": 5}},
    "keys of lists": {"answer_fields": {"keys": [[1], "x", None]}},
    "no keys": {"answer_fields": {"keys": []}},
    "nested 100,000 deep": {"answer_body": '{"keys": ' + "[" * 100_000 + "]" * 100_000 + "}"},
    "a list": {"answer_body": "[]"},
    "null": {"answer_body": "null"},
    "html": {"answer_body": "<html>identity provider error</html>"},
    "a lone surrogate escape": {"answer_body": '{"keys": ["\\ud800"]}'},
    "down": {"outage": True},
}


@pytest.mark.parametrize("fault", HOSTILE_DOCUMENTS.values(), ids=HOSTILE_DOCUMENTS.keys())
async def test_no_usable_key_in_a_hostile_jwks_is_503_never_500(
    admin: httpx.AsyncClient, verifier: TokenVerifier, fault: dict[str, Any]
) -> None:
    await publish(admin, **fault)
    with pytest.raises(DependencyUnavailable):
        await verifier.verify(sign({}))


@pytest.mark.filterwarnings("ignore::jwt.warnings.InsecureKeyLengthWarning")  # SMALL signs
async def test_usable_keys_are_kept_and_hostile_ones_skipped(
    admin: httpx.AsyncClient, verifier: TokenVerifier
) -> None:
    ed_jwk = {**OKPAlgorithm.to_jwk(ED.public_key(), as_dict=True), "kid": "ed", "alg": "EdDSA"}
    keys = [jwk(SMALL, kid="small"), jwk(OURS, kid="x" * 500), jwk(OURS), [1], ed_jwk]
    await publish(admin, answer_fields={"keys": keys, "x5c": ["ignored"]})
    assert (await verifier.verify(sign({}))).sub == "user-1"
    assert (await verifier.verify(sign({"sub": "user-2"}, "ed", ED, "EdDSA"))).sub == "user-2"
    with pytest.raises(Unauthenticated, match="unknown key"):
        await verifier.verify(sign({}, kid="small", key=SMALL))  # skipped: 1024 bits


async def test_a_hostile_jwks_after_a_good_one_keeps_the_good_keys(
    admin: httpx.AsyncClient, verifier: TokenVerifier
) -> None:
    await publish(admin, answer_fields={"keys": [jwk(OURS)]})
    assert (await verifier.verify(sign({}))).sub == "user-1"
    await publish(admin, answer_body="[" * 100_000)
    with pytest.raises(Unauthenticated, match="unknown key"):  # refetched: refused, kept
        await verifier.verify(sign({}, kid="k2"))
    assert (await verifier.verify(sign({"sub": "user-3"}))).sub == "user-3"


HOSTILE_CLAIMS: dict[str, dict[str, Any]] = {
    "exp past 64 bits": {"exp": 10**400},
    "exp 2**63": {"exp": 2**63},
    "exp 1e300": {"exp": 1e300},
    "exp a string": {"exp": "soon"},
    "exp true": {"exp": True},
    "iat negative": {"iat": -(10**30)},
    "iat past 64 bits": {"iat": 10**400},
    "nbf past 64 bits": {"nbf": 10**400},
    "nbf negative": {"nbf": -1},
    "roles: 17": {"roles": ["rider"] * 17},
    "roles: a long name": {"roles": ["rider", "r" * 129]},
    "roles: a number": {"roles": [1]},
    "roles: a string": {"roles": "rider"},
    "sub with a NUL": {"sub": "user\x001"},
    "sub of 65": {"sub": "u" * 65},
    "sub a list": {"sub": ["user-1"]},
}


@pytest.mark.parametrize("claims", HOSTILE_CLAIMS.values(), ids=HOSTILE_CLAIMS.keys())
async def test_absurd_claims_signed_by_the_provider_are_401(
    admin: httpx.AsyncClient, verifier: TokenVerifier, claims: dict[str, Any]
) -> None:
    await publish(admin, answer_fields={"keys": [jwk(OURS)]})
    with pytest.raises(Unauthenticated):
        await verifier.verify(sign(claims))


async def test_odd_kids_and_deep_headers_are_401(
    admin: httpx.AsyncClient, verifier: TokenVerifier
) -> None:
    await publish(admin, answer_fields={"keys": [jwk(OURS)]})
    for kid in ("k" * 129, "k1\n", "a b", "k\x00"):
        with pytest.raises(Unauthenticated, match="names no key"):
            await verifier.verify(sign({}, kid=kid))
    deep = base64.urlsafe_b64encode(b"[" * 3000 + b"]" * 3000).decode().rstrip("=")
    with pytest.raises(Unauthenticated):
        await verifier.verify(f"{deep}.e30.c2ln")
    now = int(time.time())
    claims = f'{{"iss":"{ISS}","aud":"{AUD}","sub":"user-1","iat":{now},"exp":{now + 600}'
    payload = (claims + ',"x":' + "[" * 2000 + "]" * 2000 + "}").encode()
    signed = jwt.api_jws.encode(payload, OURS, algorithm="RS256", headers={"kid": "k1"})
    with pytest.raises(Unauthenticated):  # signed, and nested past Python's json
        await verifier.verify(signed)


async def test_unknown_roles_are_dropped(admin: httpx.AsyncClient, verifier: TokenVerifier) -> None:
    await publish(admin, answer_fields={"keys": [jwk(OURS)]})
    principal = await verifier.verify(sign({"roles": ["rider", "admin", "x" * 100]}))
    assert principal.roles == frozenset({"rider"})


async def test_an_api_whose_provider_publishes_nonsense_answers_503_then_recovers(
    base_settings: Settings, database: str, stubs: str, idp: str, admin: httpx.AsyncClient
) -> None:
    """The query API as a process, its identity provider the private stub: 503
    ``dependency_unavailable`` with Retry-After while the JWKS is nonsense, served once
    it is fixed."""
    await publish(admin, answer_body='{"keys": ' + "[" * 50_000 + "]" * 50_000 + "}")
    port, metrics_port = free_port(), free_port()
    settings = base_settings.replace(
        identity={
            "url": idp,
            "issuer": ISS,
            "audience": AUD,
            "jwks_refresh_min_seconds": 0.2,
        },
        serving={"query_port": port, "query_metrics_port": metrics_port},
    )
    proc: subprocess.Popen[bytes] = start_process("query_api", settings)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health/live", proc=proc)
        token = sign({})
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            headers = {"Authorization": f"Bearer {token}"}
            answer = await client.get("/users/user-1/summary", headers=headers)
            assert answer.status_code == 503, answer.text
            assert answer.json()["code"] == "dependency_unavailable"
            assert answer.headers["retry-after"]
            await publish(admin, answer_body="", answer_fields={"keys": [jwk(OURS)]})
            for _ in range(50):
                answer = await client.get("/users/user-1/summary", headers=headers)
                if answer.status_code != 503:
                    break
                await asyncio.sleep(0.1)
            # signed in: the summary, or 404 while user-1 has none in this run's database
            assert answer.status_code in (200, 404), answer.text
            bad = sign({"exp": 10**400})
            answer = await client.get(
                "/users/user-1/summary", headers={"Authorization": f"Bearer {bad}"}
            )
            assert answer.status_code == 401, answer.text
            assert answer.json()["code"] == "unauthenticated"
    finally:
        stop_process(proc)
