"""The load tests in smoke mode, so they never rot: the whole stack, a few seconds each.

Nothing here asserts speed; the numbers belong in docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ADMIN_DSN, REDIS_URL

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("side", ["command", "query", "soak"])
def test_load_test_runs_clean(side: str, tmp_path: Path) -> None:
    out = tmp_path / f"{side}.json"
    # the run picks free ports and a private database and key prefix (tests/load/bench.py)
    # on the servers the other tests use
    env = {
        **os.environ,
        "SCOOTERS_DATABASE_URL": ADMIN_DSN.rsplit("/", 1)[0] + "/scooters",
        "SCOOTERS_REDIS_URL": REDIS_URL,
    }
    done = subprocess.run(
        [sys.executable, "-m", "tests.load", side, "--smoke", "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=360,  # the query side also starts a second, two-process query API
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    reports = json.loads(out.read_text())["reports"]
    measured = [r for r in reports if r["side"] in {"command", "query", "ceiling", "soak"}]
    assert measured, reports
    for report in measured:
        assert report["errors"] == {}, report
        assert report["flows_per_s"] > 0
        assert set(report["cpu"]) >= {"postgres", "redis", "load generator"}
        if report["side"] in {"command", "query"}:  # issue 13: costs per flow or request
            assert report["cpu_ms_per"]["ours"] > 0
            assert report["postgres_per"]["commits"] >= 0
    if side == "command":
        command = next(r for r in reports if r["side"] == "command")
        assert command["postgres_per"]["commits"] > 0
        assert command["postgres_per"]["row_writes"] > 0
        assert command["postgres_per"]["wal_bytes"] > 0
    if side == "query":
        tops = [r for r in reports if "ratio_to_ceiling" in r]
        assert sorted(r["query_processes"] for r in tops) == [1, 2]
        assert all(r["ratio_to_ceiling"] > 0 and r["cpu_ratio_to_ceiling"] for r in tops)
        rounds = next(r for r in reports if r["side"] == "read rounds")
        assert rounds["errors"] == {}, rounds
        assert [sorted(row["order"]) for row in rounds["rounds"]] == [["bare", "one", "two"]]
        assert rounds["ratio"]["two"]["median"] > 0
        assert rounds["ratio"]["two_cpu"]["n"] == 1
    storage = next(r for r in reports if r["side"] == "storage")
    assert storage["ended_orders"] > 0
    assert storage["db_row_bytes_avg"] > 0
