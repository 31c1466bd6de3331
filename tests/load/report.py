"""``python -m tests.load.report RESULT.json ...``: results as Markdown tables for docs."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def table(report: dict[str, Any]) -> str:
    lines = [
        f"**{report['side']}**, offered {report['offered']}: "
        f"{report['flows_per_s']}/s"
        + (
            f", {report['ratio_to_ceiling']:.1%} of the ceiling"
            + (
                f" ({report['cpu_ratio_to_ceiling']:.1%} by CPU per request)"
                if report.get("cpu_ratio_to_ceiling")
                else ""
            )
            + (
                f" ({report['query_processes']} query process(es)"
                f"{', code ' + report['code'] if 'code' in report else ''}"
                f" vs {report['ceiling_per_s']}/s)"
                if "query_processes" in report
                else ""
            )
            if "ratio_to_ceiling" in report
            else ""
        ),
        "",
        "| endpoint | count | rps | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for endpoint, row in report["latency"].items():
        lines.append(
            f"| `{endpoint}` | {row['count']} | {row['rps']} | {row['p50_ms']} | "
            f"{row['p95_ms']} | {row['p99_ms']} | {row['max_ms']} |"
        )
    cpu = ", ".join(f"{k} {v:.2f}" for k, v in report["cpu"].items() if v >= 0.005)
    summary = f"errors: {report['errors'] or 'none'}; cores: {cpu}"
    if "projection_lag" in report:
        lag = report["projection_lag"]
        summary += f"; projection lag p50 {lag['p50_ms']} ms, p99 {lag['p99_ms']} ms"
    lines += ["", summary]
    if report.get("cpu_ms_per"):
        lines += ["", *cost_table(report)]
    return "\n".join(lines)


# the processes in the order of a flow, then the bench's own
PROCESSES = (
    "command_api",
    "worker",
    "projector",
    "query_api",
    "query_api x2",
    "postgres",
    "postgres background",
    "redis",
    "ours",
    "stubs",
    "load generator",
    "ceiling",
    "postgres others",
    "machine (all)",
)


def cost_table(report: dict[str, Any]) -> list[str]:
    """CPU-ms per flow (or request) per process, and Postgres work per flow."""
    per = report.get("per", "flow")
    cpu = report["cpu_ms_per"]
    names = [n for n in PROCESSES if n in cpu and (cpu[n] >= 0.0005 or n == "ours")]
    lines = [
        f"| CPU ms per {per} | " + " | ".join(names) + " |",
        "|---|" + "---:|" * len(names),
        "| | " + " | ".join(_ms(cpu[n], bold=n == "ours") for n in names) + " |",
    ]
    pg = report.get("postgres_per")
    if pg:
        lines += [
            "",
            f"Postgres per {per}: {pg['commits']} commits, {pg['row_writes']} row writes "
            f"({pg['rows_inserted']} inserted, {pg['rows_updated']} updated, "
            f"{pg['rows_deleted']} deleted), {pg['wal_bytes'] / 1024:.1f} KB WAL "
            f"({pg['wal_records']} records, {pg['wal_full_page_images']} full-page images; "
            "cluster-wide)",
        ]
    return lines


def _ms(value: float, bold: bool = False) -> str:
    text = f"{value:.3f}" if value < 1 else f"{value:.2f}"
    return f"**{text}**" if bold else text


def rounds_table(report: dict[str, Any]) -> list[str]:
    """The ``read rounds`` report (``tests.load.rounds``) as a Markdown table per round,
    then the medians with their spread and each kind's CPU ms per request and cores."""
    lines = [
        f"**read rounds**, {len(report['rounds'])} x {report['round_seconds']} s windows, "
        f"load average {report['load_average'][0][0]} at the start",
        "",
        "| round | order | bare /s | one /s | two /s | one / bare | two / bare "
        "| by CPU: one | two |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["rounds"]:
        cells = [f"{row.get(k, 0):.0f}" for k in ("bare_per_s", "one_per_s", "two_per_s")]
        cells += [_pct(row.get(k)) for k in ("one", "two", "one_cpu", "two_cpu")]
        lines.append(f"| {row['round']} | {', '.join(row['order'])} | " + " | ".join(cells) + " |")
    lines.append("")
    for key, spread in report["ratio"].items():
        if spread:
            lines.append(
                f"- {key}: median **{spread['median']:.1%}** "
                f"({spread['min']:.1%} to {spread['max']:.1%}, {spread['n']} rounds)"
            )
    for kind, figures in report["per_kind"].items():
        row_cells = ", ".join(
            f"{n} {ms:.3f} ms ({figures['cores'][n]:.2f} cores)"
            for n, ms in figures["cpu_ms_per"].items()
        )
        lines.append(f"- {report['labels'].get(kind, kind)}: {row_cells}")
    return lines


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def main() -> None:
    for path in sys.argv[1:]:
        for report in json.loads(Path(path).read_text())["reports"]:
            if report["side"] == "storage":
                print(f"storage: {report}\n")
            elif report["side"] == "read rounds":
                print("\n".join(rounds_table(report)) + "\n")
            else:
                print(table(report) + "\n")


if __name__ == "__main__":
    main()
