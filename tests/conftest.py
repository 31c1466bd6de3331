"""Shared fixtures: a private database, Redis key prefix and stub services per test run.

Tests talk to the real Postgres and Redis of the machine, never to leftovers:
each run creates (and drops) its own database and uses its own key prefix.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import httpx
import hypothesis
import pytest

from migrations.runner import migrate
from shared.offer_token import encode_offer_key, new_offer_key
from shared.settings import Settings
from stubs import StubSettings
from tests.auth import Tokens, tokens_for
from tests.ports import free_port

ROOT = Path(__file__).resolve().parents[1]

# Property tests assert outcomes, never speed (speed is measured by the load tests): no
# per-example deadline, which a busy CI machine would otherwise turn into a flaky failure.
hypothesis.settings.register_profile("scooters", deadline=None)
hypothesis.settings.load_profile("scooters")
# Tests create and drop their own databases through this role; by default the project's
# development role (a superuser of the local server, made by bin/up / bin/test) on the
# server of SCOOTERS_DATABASE_URL, connected to its maintenance database.
ADMIN_DSN = os.environ.get(
    "SCOOTERS_TEST_ADMIN_DSN", Settings.from_env().db.url.rsplit("/", 1)[0] + "/postgres"
)
REDIS_URL = os.environ.get("SCOOTERS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
ADMIN_TOKEN = secrets.token_urlsafe(24)  # the stubs' admin token of this run
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}  # headers of a stubs' admin call


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Block until ``url`` answers 200 (or fail, showing the process's exit)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def test_database_url(name: str) -> str:
    return ADMIN_DSN.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def run_id() -> str:
    return secrets.token_hex(4)


@pytest.fixture(scope="session")
def stubs_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def base_settings(run_id: str, stubs_port: int) -> Settings:
    """Settings of this test run: private database and key prefix, fast timeouts."""
    return Settings().replace(
        db={"url": test_database_url(f"scooters_test_{run_id}")},
        redis={"url": REDIS_URL, "key_prefix": f"test:{run_id}:"},
        external={
            "base_url": f"http://127.0.0.1:{stubs_port}",
            "http_timeout_seconds": 0.5,
            "payment_timeout_seconds": 0.5,
            "configs_refresh_seconds": 60,
        },
        payments={
            "retry_base_seconds": 0.05,
            "retry_max_seconds": 0.2,
            "max_attempts": 3,
            "stuck_hold_seconds": 3,
        },
        maintenance={"worker_poll_seconds": 0.05},
        # a key of this run; the development path (a key created in Postgres) is tested
        # on its own in tests/e2e/test_identity.py; the rate-limit test sets its own limit
        offers={"keys": encode_offer_key(new_offer_key()), "rate_limit": 100_000},
        serving={
            # in-process apps come and go: no metrics servers unless a test sets a port
            "command_metrics_port": 0,
            "query_metrics_port": 0,
            # concurrency tests fire dozens of requests at once; test_overload sets small limits
            "command_max_requests_in_flight": 256,
            "query_max_requests_in_flight": 256,
            # a busy test machine must not shed them either: the adaptive limit has its
            # own tests (tests/unit/test_admission.py)
            "query_admission_lag_target_ms": 0,
        },
    )


@pytest.fixture(scope="session")
def stub_settings(stubs_port: int) -> StubSettings:
    """The stubs of this test run: the default data set on a free port."""
    return StubSettings(port=stubs_port, admin_token=ADMIN_TOKEN)


@pytest.fixture(scope="session")
async def database(base_settings: Settings) -> AsyncIterator[str]:
    """A freshly migrated database for this run, dropped at the end."""
    await migrate(base_settings)
    yield base_settings.db.url
    await drop_database(base_settings.db.url)


async def drop_database(dsn: str) -> None:
    """Drop the database ``dsn`` names (if it exists), whoever is still connected to it."""
    admin = await asyncpg.connect(ADMIN_DSN)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await admin.close()


def start_process(
    module: str,
    settings: Settings,
    extra_env: dict[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """Start ``python -m module`` with ``settings`` exported as SCOOTERS_* variables."""
    env = {**os.environ, **settings.to_env(), **(extra_env or {})}
    return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="session")
def stubs(base_settings: Settings, stub_settings: StubSettings) -> Iterator[str]:
    """The external services' stubs as a real server; yields their base URL."""
    proc = start_process("stubs", base_settings, stub_settings.to_env())
    url = base_settings.external.base_url
    try:
        wait_http(f"{url}/health/live", proc=proc)
        yield url
    finally:
        stop_process(proc)


@pytest.fixture
def reset_faults(stubs: str) -> Iterator[None]:
    """Clear every fault switch before and after a test that sets some."""

    def clear() -> None:
        for service in ("scooters", "zones", "users", "configs", "payments", "identity"):
            httpx.post(
                f"{stubs}/admin/faults",
                json={
                    "service": service,
                    "outage": False,
                    "latency_ms": 0,
                    "error_rate": 0.0,
                    "reply_delay_ms": 0,
                    "decline": False,
                    "answer_fields": {},
                    "answer_body": "",
                },
                headers=ADMIN,
                timeout=5,
            ).raise_for_status()

    clear()
    yield
    clear()


@pytest.fixture(scope="session")
def tokens(stubs: str, base_settings: Settings) -> Tokens:
    """Bearer tokens from the identity stub of this run."""
    return tokens_for(base_settings, ADMIN_TOKEN)
