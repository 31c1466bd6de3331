"""A worker that is gone leaves no gauge behind in the one ``/metrics`` answer of several
workers (prometheus-client multiprocess mode, shared/infra/metrics_server.py), while its
counters still count in the service's totals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from shared.infra.metrics_server import forget_dead_workers, registry

# a worker: one projector-lag gauge (live mode, as query_api/metrics.py declares it) and
# one counter, written to the multiprocess directory; it prints its pid and exits, or
# stays until its stdin closes
WORKER = """
import os, sys
from prometheus_client import Counter, Gauge
lag = Gauge("test_lag_seconds", "lag", multiprocess_mode="liveall")
served = Counter("test_served", "served")
lag.set(3)
served.inc(5)
print(os.getpid(), flush=True)
if sys.argv[1] == "stay":
    sys.stdin.read()
"""


def worker(directory: Path, stay: bool) -> tuple[int, subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER, "stay" if stay else "exit"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)},
    )
    assert proc.stdout is not None
    return int(proc.stdout.readline()), proc


def test_a_dead_workers_gauge_is_dropped_and_its_counts_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dead_pid, dead = worker(tmp_path, stay=False)
    dead.wait(timeout=30)
    live_pid, live = worker(tmp_path, stay=True)
    try:
        assert {f.name for f in tmp_path.glob("gauge_*")} == {
            f"gauge_liveall_{dead_pid}.db",
            f"gauge_liveall_{live_pid}.db",
        }
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
        text = generate_latest(registry()).decode()
        assert f'test_lag_seconds{{pid="{live_pid}"}} 3.0' in text
        assert f'pid="{dead_pid}"' not in text  # the dead worker's gauge is gone
        assert "test_served_total 10.0" in text  # both workers' counts stay
        assert not (tmp_path / f"gauge_liveall_{dead_pid}.db").exists()
        assert forget_dead_workers(str(tmp_path)) == []  # the live one stays
    finally:
        assert live.stdin is not None
        live.stdin.close()
        live.wait(timeout=30)
