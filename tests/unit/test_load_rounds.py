"""The read rounds' arithmetic (tests/load/rounds.py): the order of the windows, each
round's ratios to its own bare window, and the medians with their spread."""

from __future__ import annotations

from typing import Any

from tests.load.rounds import format_summary, round_order, round_ratios, summarize


def window(kind: str, per_s: float, server_ms: float, errors: dict[str, int] | None = None) -> Any:
    name = {"bare": "ceiling", "one": "query_api", "two": "query_api x2"}[kind]
    return {
        "kind": kind,
        "flows_per_s": per_s,
        "errors": errors or {},
        "cpu": {name: 1.0, "load generator": 0.3},
        "cpu_ms_per": {name: server_ms, "load generator": 0.03, "machine (all)": 0.2},
    }


def test_each_kind_takes_each_position_once_in_three_rounds() -> None:
    orders = [round_order(i) for i in range(3)]
    assert orders == [["bare", "one", "two"], ["one", "two", "bare"], ["two", "bare", "one"]]
    assert round_order(3) == orders[0]
    assert round_order(1, ("bare", "one")) == ["one", "bare"]


def test_a_rounds_ratios_are_to_its_own_bare_window() -> None:
    ratios = round_ratios([window("one", 6000, 0.14), window("bare", 12000, 0.07)])
    assert ratios == {"one": 0.5, "one_cpu": 0.5, "two": None, "two_cpu": None}


def test_summary_gives_the_median_and_spread_and_sums_the_errors() -> None:
    rounds = [
        [window("bare", 10000, 0.08), window("one", 6000, 0.13), window("two", 9000, 0.15)],
        [window("one", 6600, 0.13), window("two", 12000, 0.14), window("bare", 12000, 0.08)],
        [
            window("two", 11000, 0.16, {"GET /orders/{id}: HTTP 503 x": 2}),
            window("bare", 11000, 0.07),
            window("one", 5500, 0.13),
        ],
    ]
    summary = summarize(rounds)
    assert [row["order"][0] for row in summary["rounds"]] == ["bare", "one", "two"]
    assert summary["ratio"]["two"] == {"median": 1.0, "min": 0.9, "max": 1.0, "n": 3}
    assert summary["ratio"]["one"]["median"] == 0.55
    assert summary["per_s"]["bare"]["median"] == 11000
    assert summary["per_kind"]["two"]["cpu_ms_per"]["query_api x2"] == 0.15
    assert summary["per_kind"]["bare"]["cores"]["load generator"] == 0.3
    assert summary["errors"] == {"GET /orders/{id}: HTTP 503 x": 2}
    text = "\n".join(format_summary(summary, {"bare": "bare", "one": "1", "two": "2"}))
    assert "2 / bare, by throughput: median 100.0% (lowest 90.0%, highest 100.0%, 3 rounds)" in text
    assert "bare: median 11000/s (lowest 10000, highest 12000)" in text
