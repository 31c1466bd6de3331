"""``/metrics`` of an API process on an internal port, never on the public one.

Each process serves its own registry (prometheus_client's HTTP server, a thread). With
several uvicorn workers of one API, each takes the first free port from ``port`` to
``port + workers - 1``, so the scraper lists that range.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

log = logging.getLogger("metrics")


def start_metrics_server(host: str, port: int, workers: int = 1) -> Callable[[], None]:
    """Serve ``/metrics`` on ``host:port`` (or the next free of ``workers`` ports).

    Returns a function that stops it. ``port == 0`` serves nothing. When every port of
    the range is taken, logs a warning and serves nothing (the API itself still runs).
    """
    if port == 0:
        return lambda: None
    for candidate in range(port, port + max(1, workers)):
        try:
            server, thread = start_http_server(candidate, addr=host)
        except OSError:
            continue
        log.info("metrics on http://%s:%d/metrics", host, candidate)
        return functools.partial(_stop, server, thread)
    log.warning(
        "no free metrics port in %d..%d; this process serves no /metrics", port, port + workers - 1
    )
    return lambda: None


def _stop(server: WSGIServer, thread: threading.Thread) -> None:
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)
