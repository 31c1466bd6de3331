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
        timeout=240,
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
    storage = next(r for r in reports if r["side"] == "storage")
    assert storage["ended_orders"] > 0
    assert storage["db_row_bytes_avg"] > 0
