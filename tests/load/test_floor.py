"""The floor apps of issue 13 (tests/load/floor.py) in smoke mode, so they never rot: a
handful of ride flows through each, and ours, against real Postgres, Redis and the stubs.

``tests.load.command_cost`` reads the flows' orders back and fails when one is not ended
and settled or an app's answers differ in shape from ours; here every ride is charged
(free rides off), and each app's charged orders carry an amount.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ADMIN_DSN, REDIS_URL

ROOT = Path(__file__).resolve().parents[2]


def test_floor_apps_end_and_charge_rides() -> None:
    env = {
        **os.environ,
        "SCOOTERS_DATABASE_URL": ADMIN_DSN.rsplit("/", 1)[0] + "/scooters",
        "SCOOTERS_REDIS_URL": REDIS_URL,
    }
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.load.command_cost",
            "--apps",
            "ours,litestar,raw",
            "--rounds",
            "1",
            "--count",
            "20",
            "--riders",
            "20",
            "--concurrency",
            "4",
            "--pool",
            "4",
            "--free-ride-seconds",
            "0",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {
        line.split(": ", 1)[0]: ast.literal_eval(line.split(": ", 1)[1])
        for line in done.stdout.splitlines()
        if line.startswith(".") and ": {" in line
    }
    assert set(rows) == {".", ". [litestar]", ". [raw]"}, done.stdout
    for name, row in rows.items():
        assert row["failed"] == 0, (name, row)
        charged = row["orders"]["finished/charged"]
        assert charged["n"] > 0, (name, row)
        assert charged["charged_avg"] > 0, (name, row)
        assert sum(state["n"] for state in row["orders"].values()) == 20 + 100, (name, row)


def test_floor_parts_run(tmp_path: Path) -> None:
    """``tests.load.floor_parts`` at a tiny size: every figure is measured."""
    env = {
        **os.environ,
        "SCOOTERS_DATABASE_URL": ADMIN_DSN.rsplit("/", 1)[0] + "/scooters",
        "SCOOTERS_REDIS_URL": REDIS_URL,
    }
    out = tmp_path / "parts.json"
    tiny = ["--n", "80", "--flows", "10", "--riders", "40", "--cycle", "--served", "20"]
    done = subprocess.run(
        [sys.executable, "-m", "tests.load.floor_parts", *tiny, "--json", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    assert len(results["parts_us"]) >= 30
    assert set(results["cycle_us_per_flow"]) == {"ours", "litestar", "raw", "driver alone"}
    assert len(results["served_canned_us_per_flow"]) == 3
