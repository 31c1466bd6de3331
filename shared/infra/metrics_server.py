"""``/metrics`` of an API process on an internal port, never on the public one.

Each process serves ``/metrics`` with prometheus_client's HTTP server (a thread). With
several uvicorn workers of one API, each takes the first free port from ``port`` to
``port + workers - 1``. In prometheus-client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``
set, as ``shared/infra/serving.py`` does for more than one worker) every one of those
ports answers with the sum over all workers' files, so scraping ``port`` alone covers the
whole service (docs/scaling.md, "Metrics"); otherwise each answers for its own process.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector

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
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        return REGISTRY
    collected = CollectorRegistry()
    MultiProcessCollector(collected)  # type: ignore[no-untyped-call]
    return collected


def _stop(server: WSGIServer, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
