"""The overload tool's server view (tests/load/overload.py): the admitted answers' p50/p99
from the difference of two readings of an API's ``http_request_duration_seconds``, read
over HTTP from a real prometheus-client metrics server."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from tests.load.overload import admitted_histogram, histogram_view
from tests.ports import free_port


def test_the_server_view_counts_the_2xx_answers_between_two_readings() -> None:
    registry = CollectorRegistry()
    seconds = Histogram(
        "http_request_duration_seconds",
        "test",
        ["app", "method", "route", "status"],
        buckets=(0.001, 0.01, 0.1, 1),
        registry=registry,
    )
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        ok = seconds.labels("query_api", "GET", "/orders/{order_id}", "200")
        created = seconds.labels("command_api", "POST", "/offers", "201")
        failed = seconds.labels("query_api", "GET", "/orders/{order_id}", "503")
        ok.observe(5.0)  # before the phase: not in its view
        before = admitted_histogram(port)
        for _ in range(60):
            ok.observe(0.0005)
        for _ in range(39):
            created.observe(0.05)
        ok.observe(0.5)  # the 100th: the p99
        for _ in range(50):
            failed.observe(0.0001)  # not admitted work: left out
        view = histogram_view(before, admitted_histogram(port))
    finally:
        server.shutdown()
        thread.join()

    assert view == {"count": 100, "p50_ms_at_most": 1.0, "p99_ms_at_most": 100.0}


def test_no_metrics_port_gives_no_server_view() -> None:
    assert admitted_histogram(0) == {}
    assert histogram_view({}, admitted_histogram(0)) == {}


def test_the_server_view_counts_what_the_api_shed_itself() -> None:
    registry = CollectorRegistry()
    seconds = Histogram(
        "http_request_duration_seconds",
        "test",
        ["app", "method", "route", "status"],
        buckets=(0.001, 0.01),
        registry=registry,
    )
    shed = Counter("http_requests_shed", "test", ["app"], registry=registry)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        shed.labels("query_api").inc(7)  # before the phase
        before = admitted_histogram(port)
        seconds.labels("query_api", "GET", "/orders/{order_id}", "200").observe(0.0005)
        shed.labels("query_api").inc(3)
        view = histogram_view(before, admitted_histogram(port))
    finally:
        server.shutdown()
        thread.join()

    assert view == {"count": 1, "shed_by_api": 3, "p50_ms_at_most": 1.0, "p99_ms_at_most": 1.0}
