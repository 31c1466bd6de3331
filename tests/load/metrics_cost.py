"""``python -m tests.load.metrics_cost``: CPU per request of the metrics on the
``GET /orders/{id}`` hot path, in-memory vs prometheus-client multiprocess mode.

The hot path records one histogram observation (``http_request_duration_seconds``,
shared/infra/request_metrics.py) and one counter increment (``query_cache_hits_total``).
Each mode runs in its own interpreter (the mode is fixed when prometheus_client is
imported), alternately, a few rounds; CPU time (not wall time) per request is printed,
so a busy machine disturbs it less than a throughput run.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

_CHILD = """
import sys, time
from shared.infra.request_metrics import REQUEST_SECONDS
from query_api.metrics import CACHE_HITS
child = REQUEST_SECONDS.labels("query_api", "GET", "/orders/{order_id}", 200)
hits = CACHE_HITS.labels("order")
n = int(sys.argv[1])
started = time.process_time()
for _ in range(n):
    child.observe(0.0004)
    hits.inc()
print((time.process_time() - started) / n * 1e6)
"""


def measure(requests: int, multiprocess: bool) -> float:
    env = dict(os.environ)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with tempfile.TemporaryDirectory(prefix="metrics-cost-") as directory:
        if multiprocess:
            env["PROMETHEUS_MULTIPROC_DIR"] = directory
        done = subprocess.run(
            [sys.executable, "-c", _CHILD, str(requests)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
    return float(done.stdout.strip())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.load.metrics_cost")
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    plain: list[float] = []
    mmap: list[float] = []
    for _ in range(args.rounds):
        plain.append(measure(args.requests, multiprocess=False))
        mmap.append(measure(args.requests, multiprocess=True))
        time.sleep(0.1)
    print("CPU µs per request (histogram observe + counter inc), per round:")
    print(f"  in-memory registry : {' '.join(f'{v:.2f}' for v in plain)}")
    print(f"  multiprocess (mmap): {' '.join(f'{v:.2f}' for v in mmap)}")
    print(f"  extra per request  : {min(mmap) - min(plain):.2f} µs (best of each)")


if __name__ == "__main__":
    main()
