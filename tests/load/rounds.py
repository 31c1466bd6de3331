"""Interleaved read rounds: the bare endpoint, one and two query processes (issue 13).

A single window per figure, minutes apart, measures the box as much as the code: on the
quiet box of 2026-12-01 06:18 the bare ceiling rose from 10,956 to 13,180/s within one
run, and the two-process ratio of two runs of the same code was 103.5 % and 78.3 %
(docs/benchmarks.md, "Quiet box, 2026-12-01 06:18 UTC" and "i13reads"). The rounds
measure the three at maximum throughput in short windows, one after the other, several
times, with the order rotated from round to round (``bare, one, two``; ``one, two,
bare``; ``two, bare, one``; ...) so that no kind always follows the same one or comes
first. Each round's ratios are to **that round's** bare window, and the summary gives
the median over the rounds with its spread (lowest and highest), by throughput and by
CPU per request, and the median CPU per request and cores of each process in each kind
of window, so a reader sees what the query processes had next to the load generator,
Redis and Postgres on the same cores.

The functions here are pure (the windows themselves are ``tests.load.scenarios``'s);
``python -m tests.load query --rounds N --round-seconds S`` runs them.
"""

from __future__ import annotations

import statistics
from collections import Counter
from typing import Any

BARE, ONE, TWO = "bare", "one", "two"
KINDS = (BARE, ONE, TWO)
# the processes worth a column: what serves, what drives, what stores
SHOWN = ("ceiling", "query_api", "query_api x2", "load generator", "redis", "postgres")


def round_order(index: int, kinds: tuple[str, ...] = KINDS) -> list[str]:
    """The order of the windows in round ``index`` (0-based): ``kinds`` rotated left by
    ``index``, so over ``len(kinds)`` rounds each kind takes each position once."""
    shift = index % len(kinds)
    return list(kinds[shift:] + kinds[:shift])


def _server_ms(window: dict[str, Any]) -> float:
    """CPU ms per request of the server a window drove (its processes together)."""
    per = window["cpu_ms_per"]
    if window["kind"] == BARE:
        return float(per.get("ceiling", 0.0))
    if window["kind"] == ONE:
        return float(per.get("query_api", 0.0))
    return float(per.get("query_api x2", 0.0))


def round_ratios(windows: list[dict[str, Any]]) -> dict[str, float | None]:
    """The ratios of one round: ``one`` and ``two`` to the round's ``bare`` window, by
    throughput (requests/s over the bare's) and by CPU per request (the bare process's
    ms over the query API's, all its processes). None where a window is missing."""
    by_kind = {w["kind"]: w for w in windows}
    bare = by_kind.get(BARE)
    out: dict[str, float | None] = {}
    for kind in (ONE, TWO):
        out[kind] = out[f"{kind}_cpu"] = None
        window = by_kind.get(kind)
        if bare is None or window is None or bare["flows_per_s"] <= 0:
            continue
        out[kind] = round(window["flows_per_s"] / bare["flows_per_s"], 3)
        ms = _server_ms(window)
        out[f"{kind}_cpu"] = round(_server_ms(bare) / ms, 3) if ms > 0 else None
    return out


def _spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {
        "median": round(statistics.median(values), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
        "n": len(values),
    }


def summarize(rounds: list[list[dict[str, Any]]]) -> dict[str, Any]:
    """The rounds' summary: per round its rates and ratios; over the rounds the median,
    lowest and highest of each ratio and of each kind's rate; per kind of window the
    median CPU ms per request and cores of each process in :data:`SHOWN` (and of the
    whole machine), and the errors of all windows together (for the run's guard).

    ``rounds``: per round, its windows in the order run, each a ``scenarios.ceiling`` /
    ``scenarios.query_side`` report with ``kind`` (``bare``, ``one``, ``two``) added.
    """
    table = []
    ratios: dict[str, list[float]] = {k: [] for k in ("one", "one_cpu", "two", "two_cpu")}
    rates: dict[str, list[float]] = {k: [] for k in KINDS}
    errors: Counter[str] = Counter()
    for index, windows in enumerate(rounds):
        row: dict[str, Any] = {"round": index + 1, "order": [w["kind"] for w in windows]}
        for window in windows:
            row[f"{window['kind']}_per_s"] = window["flows_per_s"]
            row[f"{window['kind']}_server_ms"] = round(_server_ms(window), 4)
            rates[window["kind"]].append(window["flows_per_s"])
            errors.update(window["errors"])
        for key, value in round_ratios(windows).items():
            row[key] = value
            if value is not None:
                ratios[key].append(value)
        table.append(row)
    per_kind: dict[str, Any] = {}
    for kind in KINDS:
        windows = [w for ws in rounds for w in ws if w["kind"] == kind]
        if not windows:
            continue
        names = [n for n in (*SHOWN, "machine (all)") if any(n in w["cpu_ms_per"] for w in windows)]
        per_kind[kind] = {
            "cpu_ms_per": {
                n: round(statistics.median(w["cpu_ms_per"].get(n, 0.0) for w in windows), 4)
                for n in names
            },
            "cores": {
                n: round(statistics.median(w["cpu"].get(n, 0.0) for w in windows), 3) for n in names
            },
        }
    return {
        "rounds": table,
        "ratio": {k: _spread(v) for k, v in ratios.items()},
        "per_s": {k: _spread(v) for k, v in rates.items()},
        "per_kind": per_kind,
        "errors": dict(errors),
    }


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def format_summary(summary: dict[str, Any], labels: dict[str, str]) -> list[str]:
    """The summary as text lines: one line per round, the medians with their spread,
    then CPU ms per request and cores per process for each kind of window.
    ``labels``: a name per kind (e.g. ``{"two": "2 processes"}``)."""
    lines = [
        f"   {'round':>5}  {'order':<16}{'bare/s':>9}{'one/s':>9}{'two/s':>9}"
        f"{'one/bare':>10}{'two/bare':>10}{'one CPU':>9}{'two CPU':>9}"
    ]
    for row in summary["rounds"]:
        lines.append(
            f"   {row['round']:>5}  {','.join(row['order']):<16}"
            f"{row.get('bare_per_s', 0):>9.0f}{row.get('one_per_s', 0):>9.0f}"
            f"{row.get('two_per_s', 0):>9.0f}{_pct(row.get('one')):>10}{_pct(row.get('two')):>10}"
            f"{_pct(row.get('one_cpu')):>9}{_pct(row.get('two_cpu')):>9}"
        )
    for key, title in (
        ("one", f"{labels[ONE]} / bare, by throughput"),
        ("two", f"{labels[TWO]} / bare, by throughput"),
        ("one_cpu", f"{labels[ONE]} / bare, by CPU per request"),
        ("two_cpu", f"{labels[TWO]} / bare, by CPU per request"),
    ):
        spread = summary["ratio"].get(key)
        if spread:
            lines.append(
                f"   {title}: median {spread['median']:.1%} (lowest {spread['min']:.1%}, "
                f"highest {spread['max']:.1%}, {spread['n']} rounds)"
            )
    bare = summary["per_s"].get(BARE)
    if bare:  # how much the box itself moved during the rounds
        lines.append(
            f"   {labels.get(BARE, BARE)}: median {bare['median']:.0f}/s (lowest "
            f"{bare['min']:.0f}, highest {bare['max']:.0f}): a round far from the median "
            "was disturbed; its ratios are against its own bare window"
        )
    for kind, figures in summary["per_kind"].items():
        cells = ", ".join(
            f"{n} {figures['cpu_ms_per'][n]:.3f} ms / {figures['cores'][n]:.2f} cores"
            for n in figures["cpu_ms_per"]
        )
        lines.append(f"   {labels.get(kind, kind)} windows, median per request / cores: {cells}")
    return lines
