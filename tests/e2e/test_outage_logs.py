"""A dependency that is down or answers nonsense writes a bounded log (issue 8, item 7).

The same failure once per request (``dependency unavailable`` while Postgres is down,
``nonsense answer`` while a service answers nonsense...) is written ``log_noise_burst``
times per interval, with each request's id, then reported as one ``log lines suppressed``
line with the count (``shared.infra.logs.RepeatedFailureLimit``); every request still
gets its answer (503 + Retry-After for a store down or a critical service answering
nonsense; an offer without its rate limit while Redis is down) and every occurrence is
counted. The command API runs as a real process; Postgres and Redis are throwaway
servers really stopped (tests/private_stores.py).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from migrations.runner import migrate
from shared.settings import Settings
from tests.auth import Tokens
from tests.e2e.conftest import Ids, set_fault
from tests.e2e.test_log_noise import Served, events, serving
from tests.ports import free_port
from tests.private_stores import PrivatePostgres, PrivateRedis

pytestmark = pytest.mark.usefixtures("reset_faults")

BURST = 4
REQUESTS = 60
RETRY_AFTER = 3


def process_settings(base_settings: Settings) -> Settings:
    """A command API of its own ports, ``BURST`` lines per window longer than the test."""
    return base_settings.replace(
        runtime={"log_noise_burst": BURST, "log_noise_interval_seconds": 600.0},
        serving={
            "command_port": free_port(),
            "command_metrics_port": free_port(),
            "retry_after_seconds": RETRY_AFTER,
        },
    )


async def offers(
    served: Served, tokens: Tokens, ids: Ids, riders: list[str] | None = None
) -> list[httpx.Response]:
    """``REQUESTS`` offers one after another, request ids ``r-0``, ``r-1``..."""
    answers = []
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as client:
        for n in range(REQUESTS):
            rider = riders[n] if riders else f"user-{21 + n}"
            answers.append(
                await client.post(
                    "/offers",
                    json={"user_id": rider, "scooter_id": ids.scooter()},
                    headers={**tokens.headers(rider), "X-Request-ID": f"r-{n}"},
                )
            )
    return answers


def assert_unavailable(answer: httpx.Response, service: str) -> None:
    assert answer.status_code == 503, answer.text
    assert answer.headers["retry-after"] == str(RETRY_AFTER)
    assert answer.json()["code"] == "dependency_unavailable", answer.text
    assert answer.json()["service"] == service, answer.text


async def counted(served: Served, event: str, service: str) -> float:
    async with httpx.AsyncClient(timeout=10) as client:
        text = (await client.get(served.metrics_url)).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "log_repeated_failure_events_total"
        and sample.labels == {"event": event, "service": service}
    )


def assert_bounded(log: Path, event: str, service: str) -> None:
    """``BURST`` lines of ``event``, the first requests' (by id), and one summary of the
    rest; the log holds no more than a few other lines (start, stop)."""
    lines = events(log)
    written = [e for e in lines if e["event"] == event]
    assert [e["request_id"] for e in written] == [f"r-{n}" for n in range(BURST)], written
    assert {e.get("service") for e in written} == {service}
    summaries = [e for e in lines if e["event"] == "log lines suppressed"]
    assert len(summaries) == 1, summaries
    assert summaries[0]["kind"] == event
    assert summaries[0]["service"] == service
    assert int(summaries[0]["suppressed"]) == REQUESTS - BURST
    assert "request_id" not in summaries[0]  # it speaks for many requests
    assert len(lines) <= BURST + 1 + 10, lines


async def test_postgres_down_answers_every_request_and_logs_a_bounded_number_of_lines(
    base_settings: Settings,
    private_pg: PrivatePostgres,
    stubs: str,
    tokens: Tokens,
    ids: Ids,
    tmp_path: Path,
) -> None:
    settings = process_settings(base_settings).replace(
        db={"url": private_pg.dsn("scooters"), "command_timeout_seconds": 2.0}
    )
    await migrate(settings)
    log = tmp_path / "command_api.log"
    with serving("command_api", settings, log, {}) as served:
        private_pg.stop()
        for answer in await offers(served, tokens, ids):
            assert_unavailable(answer, "postgres")
        assert await counted(served, "dependency unavailable", "postgres") == REQUESTS
        served.proc.terminate()  # the app's shutdown reports what was suppressed
        served.proc.wait(timeout=10)
    assert_bounded(log, "dependency unavailable", "postgres")


async def test_a_service_answering_nonsense_logs_a_bounded_number_of_lines(
    base_settings: Settings,
    database: str,
    stubs: str,
    tokens: Tokens,
    ids: Ids,
    tmp_path: Path,
) -> None:
    log = tmp_path / "command_api.log"
    with serving("command_api", process_settings(base_settings), log, {}) as served:
        await set_fault(stubs, "scooters", answer_fields={"zone_id": "zone-1\n"})
        for answer in await offers(served, tokens, ids):
            assert_unavailable(answer, "scooters")
        assert await counted(served, "nonsense answer", "scooters") == REQUESTS
        served.proc.terminate()
        served.proc.wait(timeout=10)
    assert_bounded(log, "nonsense answer", "scooters")


async def test_redis_down_skips_the_rate_limit_with_a_bounded_number_of_lines(
    base_settings: Settings,
    database: str,
    private_redis: PrivateRedis,
    stubs: str,
    tokens: Tokens,
    ids: Ids,
    tmp_path: Path,
) -> None:
    settings = process_settings(base_settings).replace(redis={"url": private_redis.url})
    log = tmp_path / "command_api.log"
    with serving("command_api", settings, log, {}) as served:
        private_redis.stop()
        riders = [ids.rider() for _ in range(REQUESTS)]  # none with a debt: all get one
        for answer in await offers(served, tokens, ids, riders):
            assert answer.status_code == 201, answer.text  # offered, rate limit skipped
        assert await counted(served, "offer rate limit skipped", "redis") == REQUESTS
        served.proc.terminate()
        served.proc.wait(timeout=10)
    assert_bounded(log, "offer rate limit skipped", "redis")
