"""The reference implementation of issue 13 in smoke mode, so it never rots: its packages
installed in a scratch virtualenv (uv, PyPI), the functional check of one ride (201 /
201 / 200, the deposit held and the charge recorded by the payments stub), and two
seconds of the load generator's rides against it. Nothing here asserts speed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ADMIN_DSN, REDIS_URL

ROOT = Path(__file__).resolve().parents[3]


def test_reference_rides_clean(tmp_path: Path) -> None:
    out = tmp_path / "reference.json"
    env = {
        **os.environ,
        "SCOOTERS_DATABASE_URL": ADMIN_DSN.rsplit("/", 1)[0] + "/scooters",
        "SCOOTERS_REDIS_URL": REDIS_URL,
    }
    command = [sys.executable, "-m", "tests.load.reference", "--only", "reference"]
    command += ["--concurrency", "4", "--duration", "2", "--rounds", "1", "--riders", "100"]
    done = subprocess.run(
        [*command, "--json", str(out), "--logs", str(tmp_path / "reference.log")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # the first run on a machine installs the reference's packages
        check=False,
    )
    logs = (tmp_path / "reference.log").read_text() if (tmp_path / "reference.log").exists() else ""
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:] + logs[-3000:]
    result = json.loads(out.read_text())
    check = result["check"]
    assert (check["offer"], check["order"], check["finish"]) == (201, 201, 200)
    assert check["charged"] == check["total_amount"] > 0
    assert check["held"] == 300
    [phase] = result["phases"]
    assert phase["stack"] == "reference"
    assert phase["errors"] == {}, phase
    assert phase["flows"] > 0
    assert phase["cpu_ms_per"]["reference"] > 0
    assert phase["postgres_per"]["commits"] > 0
