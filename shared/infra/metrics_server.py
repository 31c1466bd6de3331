"""``/metrics`` of an API process on an internal port, never on the public one.

Each process serves ``/metrics`` with prometheus_client's HTTP server (a thread). With
several uvicorn workers of one API, each takes the first free port from ``port`` to
``port + workers - 1``. In prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``
set, as ``shared/infra/serving.py`` does for more than one worker) every one of those
ports answers with the sum over all workers' files, so scraping ``port`` alone covers the
whole service (docs/scaling.md, "Metrics"); otherwise each answers for its own process.

A worker that died (killed by uvicorn's supervisor, crashed) leaves its files behind.
Its counters and histograms must stay (the service's totals never go down), but a
gauge of a process that is gone is a series that lies: gauges are kept per live process
(``multiprocess_mode="liveall"``) and every scrape first removes the files of gauges whose
process is gone (:func:`forget_dead_workers`, prometheus-client's ``mark_process_dead``,
which uvicorn has no hook to call).
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

log = logging.getLogger("metrics")


def start_metrics_server(host: str, port: int, workers: int = 1) -> Callable[[], None]:
    """Serve ``/metrics`` on ``host:port`` (or the next free of ``workers`` ports).

    Returns a function that stops it. ``port == 0`` serves nothing. When every port of
    the range is taken, logs a warning and serves nothing (the API itself still runs).
    In multiprocess mode the answer adds up every worker's samples (:func:`registry`).
    """
    if port == 0:
        return lambda: None
    served = registry()
    for candidate in range(port, port + max(1, workers)):
        try:
            server, thread = start_http_server(candidate, addr=host, registry=served)
        except OSError:
            continue
        log.info("metrics on http://%s:%d/metrics", host, candidate)
        return functools.partial(_stop, server, thread)
    log.warning(
        "no free metrics port in %d..%d; this process serves no /metrics", port, port + workers - 1
    )
    return lambda: None


def registry() -> CollectorRegistry:
    """What ``/metrics`` answers with: in multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``
    set) a registry collecting every worker's files, as prometheus-client's documentation
    requires; else this process's default registry."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        return REGISTRY
    collected = CollectorRegistry()
    collected.register(_LiveWorkers(path))
    return collected


class _LiveWorkers(Collector):
    """Every worker's files, less the gauges of workers that are gone."""

    def __init__(self, path: str) -> None:
        self._path = path
        self._files = MultiProcessCollector(None, path)  # type: ignore[no-untyped-call]

    def collect(self) -> Iterable[Metric]:
        forget_dead_workers(self._path)
        metrics: Iterable[Metric] = self._files.collect()  # type: ignore[no-untyped-call]
        return metrics


def forget_dead_workers(path: str) -> list[int]:
    """Remove, in the multiprocess directory ``path``, the files of the live-mode gauges
    (``gauge_live*_<pid>.db``) of processes that no longer run; returns their pids."""
    dead: list[int] = []
    for file in Path(path).glob("gauge_live*_*.db"):
        try:
            pid = int(file.stem.rsplit("_", 1)[1])
        except ValueError:
            continue
        if pid not in dead and not _running(pid):
            mark_process_dead(pid, path)  # type: ignore[no-untyped-call]
            dead.append(pid)
    return dead


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's: running
        return True
    return True


def _stop(server: WSGIServer, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
