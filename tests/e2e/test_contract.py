"""Both APIs as real processes, in production mode: schemathesis over their OpenAPI
documents (zero 5xx, zero answers the document does not describe) and one JSON log event
per line whatever the caller sends (issue 8).

The schemathesis run is bounded (``MAX_EXAMPLES`` per operation, a fixed seed) so that
``bin/test`` stays short; raise ``SCOOTERS_TEST_SCHEMATHESIS_EXAMPLES`` for a deeper run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import asyncpg
import httpx
import pytest

from shared.settings import Settings
from stubs import StubSettings
from tests.auth import SUPPORT, Tokens
from tests.conftest import ADMIN_DSN, ROOT, stop_process, wait_http
from tests.ports import free_port

MAX_EXAMPLES = int(os.environ.get("SCOOTERS_TEST_SCHEMATHESIS_EXAMPLES", "15"))
CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    ]
)


@dataclasses.dataclass
class Live:
    url: str
    log: Path


def _spawn(module: str, settings: Settings, log: IO[bytes]) -> subprocess.Popen[bytes]:
    env = {**os.environ, **settings.to_env()}
    return subprocess.Popen(
        [sys.executable, "-m", module], cwd=ROOT, env=env, stdout=log, stderr=log
    )


@pytest.fixture(scope="module")
async def production_dsn(base_settings: Settings, database: str) -> AsyncIterator[str]:
    """The test database through a login role of its own with a random password, as in
    production (which refuses the development password): not a superuser, a member of
    the role that owns the database's objects."""
    dsn = urlsplit(database)
    name, password = f"scooters_prod_{secrets.token_hex(4)}", secrets.token_urlsafe(18)
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(
            f'CREATE ROLE "{name}" LOGIN NOSUPERUSER PASSWORD {quote_literal(password)}'
            f' IN ROLE "{dsn.username}"'
        )
        yield dsn._replace(netloc=f"{name}:{password}@{dsn.hostname}:{dsn.port or 5432}").geturl()
    finally:
        await admin.execute(f'DROP ROLE IF EXISTS "{name}"')
        await admin.close()


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@pytest.fixture(scope="module")
def production(base_settings: Settings, production_dsn: str, stubs: str) -> Settings:
    return base_settings.replace(
        db={"url": production_dsn},
        runtime={"environment": "production", "log_level": "INFO"},
        serving={"command_port": free_port(), "query_port": free_port()},
    )


@pytest.fixture(scope="module")
def live_apis(
    production: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Live]]:
    """The command and query APIs as processes; each one's stderr goes to its log file."""
    logs = tmp_path_factory.mktemp("logs")
    apis = {
        "command": (
            "command_api",
            f"http://127.0.0.1:{production.serving.command_port}",
            logs / "command.log",
        ),
        "query": (
            "query_api",
            f"http://127.0.0.1:{production.serving.query_port}",
            logs / "query.log",
        ),
    }
    procs: list[subprocess.Popen[bytes]] = []
    files = []
    try:
        for module, url, log in apis.values():
            files.append(log.open("wb"))
            procs.append(_spawn(module, production, files[-1]))
            wait_http(f"{url}/health/ready", proc=procs[-1])
        yield {name: Live(url, log) for name, (_, url, log) in apis.items()}
    finally:
        for proc in procs:
            stop_process(proc)
        for file in files:
            file.close()


# the operator commands (docs/operator-api.md): a rider is refused them (403), so they
# are also run signed in as support, to reach what is behind the role
OPERATOR_PATHS = r"^/(orders/[^/]+/(end|refunds)|users/[^/]+/debt/settle)$"


@pytest.mark.parametrize("name", ["command", "query", "command as support"])
def test_schemathesis_finds_no_5xx_and_no_undocumented_answer(
    live_apis: dict[str, Live], name: str, tmp_path: Path, tokens: Tokens
) -> None:
    api, _, as_support = name.partition(" as ")
    url = live_apis[api].url
    # signed in as a rider (tokens from the identity stub): the operations are reached, and
    # reading another rider's data is a documented 403
    token = tokens.get("support-1", ("support",)) if as_support else tokens.get("user-1")
    only = ["--include-path-regex", OPERATOR_PATHS] if as_support else []
    bearer = f"Authorization: Bearer {token}"
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "st"),
            "run",
            f"{url}/schema/openapi.json",
            "--checks",
            CHECKS,
            "--max-examples",
            str(MAX_EXAMPLES),
            "--seed",
            "8",
            "--generation-database",
            "none",
            "--no-color",
            "--request-timeout",
            "10",
            "--header",
            bearer,
            *only,
        ],
        cwd=tmp_path,  # its working files stay out of the repository
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "passed" in run.stdout


# --- logs: one event per line, JSON in production, a request id on each ------------------------


def _events(log: Path) -> list[dict[str, Any]]:
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    events = []
    for line in lines:
        event = json.loads(line)  # a line that is not one JSON object fails here
        assert isinstance(event, dict), line
        events.append(event)
    return events


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("query", "/orders/a%0Aforged%20line"),
        ("query", "/users/a%0D%0Aforged/summary"),
        ("command", "/orders/a%0Aforged%20line/finish"),
    ],
)
def test_percent_encoded_line_breaks_cannot_forge_a_log_line(
    live_apis: dict[str, Live], name: str, path: str, tokens: Tokens
) -> None:
    live = live_apis[name]
    request_id = f"log-injection-{name}-{len(path)}"
    method = "POST" if path.endswith("/finish") else "GET"
    response = httpx.request(
        method,
        live.url + path,
        headers={"X-Request-ID": request_id, **tokens.headers("user-1")},
        timeout=10,
    )
    assert 400 <= response.status_code < 500
    assert response.headers["x-request-id"] == request_id

    def logged() -> list[dict[str, Any]]:
        return [e for e in _events(live.log) if e.get("request_id") == request_id]

    wait_until(lambda: bool(logged()))
    refused = logged()[0]
    assert refused["event"] == "request refused"
    assert "forged" in refused["path"]
    assert "\n" in refused["path"] or "\r" in refused["path"]  # kept, but inside the event
    assert not any(line.startswith("forged") for line in live.log.read_text().splitlines())


@pytest.mark.parametrize(
    ("name", "method", "path"),
    [
        ("query", "GET", "/orders/{}"),
        ("query", "GET", "/orders/{}/track"),
        ("query", "GET", "/users/{}/summary"),
        ("command", "POST", "/orders/{}/finish"),
    ],
)
def test_a_65_kb_id_is_echoed_at_most_64_characters_in_the_answer_and_the_log(
    live_apis: dict[str, Live], name: str, method: str, path: str, tokens: Tokens
) -> None:
    """break8 (issue 8): the whole 65 KB path came back in the 404's detail and its log
    line."""
    live = live_apis[name]
    request_id = f"long-id-{name}-{path.count('/')}-{path[-6:].strip('/{}')}"
    response = httpx.request(
        method,
        live.url + path.format("x" * 65_000),
        headers={"X-Request-ID": request_id, **tokens.headers("support-1", SUPPORT)},
        timeout=10,
    )
    assert 400 <= response.status_code < 500, response.text[:300]
    detail = response.json()["detail"]
    assert len(detail) < 100, detail[:300]  # "no order xxx…x…" or the id's bound

    def logged() -> list[dict[str, Any]]:
        return [e for e in _events(live.log) if e.get("request_id") == request_id]

    wait_until(lambda: bool(logged()))
    for event in logged():
        assert len(json.dumps(event)) < 1000, str(event)[:300]


def test_every_log_line_is_one_json_event_with_a_request_id_when_serving(
    live_apis: dict[str, Live],
) -> None:
    for name, live in live_apis.items():
        httpx.get(f"{live.url}/no/such/route", timeout=10)
        events = _events(live.log)
        assert events, name
        for event in events:
            assert {"event", "level", "timestamp"} <= event.keys(), event
            if event["event"] == "request refused":
                assert event["request_id"], event


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /offers HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 30\r\n\r\n{}",
        b"POST /offers HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
        b"POST /offers HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n",
        b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
        b"FOO /health/live HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /health/live HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    ],
    ids=["two-content-lengths", "content-length-and-chunked", "bad-chunk", "nul", "method", "cl"],
)
@pytest.mark.parametrize("name", ["command", "query"])
def test_bytes_that_are_no_http_request_are_a_400_problem(
    live_apis: dict[str, Live], name: str, request_bytes: bytes
) -> None:
    """httptools refuses them before any app runs; uvicorn answered a text/plain line."""
    port = urlsplit(live_apis[name].url).port
    assert port is not None
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        raw.sendall(request_bytes)
        answer = b""
        while chunk := raw.recv(65536):  # the server closes the connection after it
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 "), answer
    assert b"content-type: application/problem+json" in head.lower(), answer
    problem = json.loads(body)
    assert problem["status"] == 400
    assert problem["code"] == "invalid_request"


def test_the_stubs_log_one_json_event_per_line_too(
    production: Settings, stub_settings: StubSettings, tmp_path: Path
) -> None:
    """The stubs configure the same logging, but their app took Litestar's default
    logging config, which replaced it: plain text lines (``WARNING - <date> -
    uvicorn.error - ...``), no JSON, no escaping, no request ids."""
    port = free_port()
    log = tmp_path / "stubs.log"
    env = {**os.environ, **production.to_env(), **stub_settings.replace(port=port).to_env()}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "stubs"], cwd=ROOT, env=env, stdout=out, stderr=out
        )
        try:
            wait_http(f"http://127.0.0.1:{port}/health/live", proc=proc)
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                raw.sendall(b"GET /a%0Aforged HTTP/1.1\r\nHost: x\r\nno colon\r\n\r\n")
                assert raw.recv(1024).startswith(b"HTTP/1.1 400")
            wait_until(lambda: "Invalid HTTP request" in log.read_text())
        finally:
            stop_process(proc)
    events = _events(log)  # every line one JSON object
    assert any(e["event"] == "Invalid HTTP request received." for e in events), events
    assert all({"event", "level", "timestamp"} <= e.keys() for e in events), events


def wait_until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("not logged in time")
        time.sleep(0.05)


# --- the documents tell the truth (issue 8, item 3) -------------------------------------------


def _documents(settings: Settings) -> dict[str, dict[str, Any]]:
    """Both APIs' OpenAPI documents as served, built in-process (no lifespan needed)."""
    from command_api.app import create_app as command_app
    from query_api.app import create_app as query_app

    return {
        "command": command_app(settings).openapi_schema.to_schema(),
        "query": query_app(settings).openapi_schema.to_schema(),
    }


def _responses(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            for status, response in operation.get("responses", {}).items():
                yield f"{method.upper()} {path}", status, response


# the one refusal that is no problem: readiness answers its Health shape with 503
HEALTH_503 = "GET /health/ready"


def test_the_query_apis_400s_are_documented_as_the_problems_it_sends(
    base_settings: Settings,
) -> None:
    """break8: each GET's 400 was Litestar's ``application/json {status_code, detail,
    extra}`` while the API answers ``invalid_request`` problems (``GET /orders/a%20b``)."""
    from query_api.app import create_app

    document = create_app(base_settings).openapi_schema.to_schema()
    wrong = [
        f"{method.upper()} {path}"
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if "400" in operation.get("responses", {})
        and "application/problem+json" not in operation["responses"]["400"]["content"]
    ]
    assert wrong == []


def test_every_refusal_in_both_documents_is_a_problem_with_its_codes(
    base_settings: Settings,
) -> None:
    wrong = []
    for api, document in _documents(base_settings).items():
        schemas = document["components"]["schemas"]
        for operation, status, response in _responses(document):
            if status[0] not in "45" or (operation == HEALTH_503 and status == "503"):
                continue
            content = response.get("content", {})
            if list(content) != ["application/problem+json"]:
                wrong.append((api, operation, status, list(content)))
                continue
            schema = content["application/problem+json"]["schema"]
            if "$ref" in schema:
                schema = schemas[schema["$ref"].rpartition("/")[2]]
            code = schema["properties"]["code"]
            codes = code.get("enum") or [code.get("const")]
            if not all(codes) or schema["properties"]["status"].get("const") != int(status):
                wrong.append((api, operation, status, schema["properties"]))
    assert wrong == []


def test_the_headers_refusals_are_sent_with_are_declared(base_settings: Settings) -> None:
    """``Retry-After`` of every 429 and 503 problem, ``WWW-Authenticate`` of every 401."""
    expected = {"401": "WWW-Authenticate", "429": "Retry-After", "503": "Retry-After"}
    seen: set[str] = set()
    wrong = []
    for api, document in _documents(base_settings).items():
        for operation, status, response in _responses(document):
            header = expected.get(status)
            if header is None or (operation == HEALTH_503 and status == "503"):
                continue
            seen.add(status)
            declared = response.get("headers", {}).get(header, {})
            if not declared.get("required") or "schema" not in declared:
                wrong.append((api, operation, status))
    assert seen == set(expected)
    assert wrong == []


@pytest.mark.parametrize("name", ["command", "query"])
@pytest.mark.parametrize(
    "path", ["/schema/nope", "/schema/swagger", "/schema/elements", "/schema/nope.json"]
)
def test_an_unknown_name_under_schema_is_a_404_problem(
    live_apis: dict[str, Live], name: str, path: str, tokens: Tokens
) -> None:
    """Litestar answered an HTML page; and the UI pages (scripts from a CDN) are off."""
    answer = httpx.get(live_apis[name].url + path, headers=tokens.headers("user-1"))
    assert answer.status_code == 404, answer.text
    assert answer.headers["content-type"] == "application/problem+json"
    assert answer.json()["code"] == "not_found"


@pytest.mark.parametrize("name", ["command", "query"])
@pytest.mark.parametrize("path", ["/schema/openapi.json", "/schema/openapi.yaml", "/schema"])
def test_the_documents_are_still_served(
    live_apis: dict[str, Live], name: str, path: str, tokens: Tokens
) -> None:
    answer = httpx.get(live_apis[name].url + path, headers=tokens.headers("user-1"))
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/vnd.oai.openapi")
    assert b"<script" not in answer.content


CONSOLE_ORIGIN = "http://console.example"
PREFLIGHTS = {  # what the preflight asks for -> what Litestar refused with text/plain
    "origin": {"origin": "http://elsewhere.example", "access-control-request-method": "POST"},
    "method": {"origin": CONSOLE_ORIGIN, "access-control-request-method": "DELETE"},
    "header": {
        "origin": CONSOLE_ORIGIN,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, x-elsewhere",
    },
}


def _cors_apps(base_settings: Settings) -> dict[str, Any]:
    from command_api.app import create_app as command_app
    from stubs._app import create_app as stubs_app

    return {
        "command": command_app(
            base_settings.replace(console={"cors_allow_origins": CONSOLE_ORIGIN})
        ),
        "stubs": stubs_app(StubSettings(cors_allow_origins=CONSOLE_ORIGIN)),
    }


@pytest.mark.parametrize("refused", list(PREFLIGHTS))
async def test_a_refused_cors_preflight_is_a_400_problem(
    base_settings: Settings, refused: str
) -> None:
    """Litestar answered ``400 text/plain`` "Disallowed CORS Origin" (break8)."""
    for name, app in _cors_apps(base_settings).items():
        transport = httpx.ASGITransport(app=app)  # the CORS layer answers before sign-in
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            answer = await http.options("/orders", headers=PREFLIGHTS[refused])
        assert answer.status_code == 400, (name, answer.text)
        assert answer.headers["content-type"] == "application/problem+json", name
        assert answer.json()["code"] == "invalid_request", name
        assert "access-control-allow-origin" not in answer.headers, name


async def test_an_allowed_cors_preflight_is_still_allowed(base_settings: Settings) -> None:
    allowed = {
        "origin": CONSOLE_ORIGIN,
        "access-control-request-method": "POST",
        "access-control-request-headers": "authorization, content-type",
    }
    for name, app in _cors_apps(base_settings).items():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            answer = await http.options("/orders", headers=allowed)
        assert answer.status_code == 204, (name, answer.text)
        assert answer.headers["access-control-allow-origin"] == CONSOLE_ORIGIN, name
