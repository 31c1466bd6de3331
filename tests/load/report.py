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
            f", {report['ratio_to_ceiling']:.0%} of the ceiling"
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
    return "\n".join(lines)


def main() -> None:
    for path in sys.argv[1:]:
        for report in json.loads(Path(path).read_text())["reports"]:
            if report["side"] == "storage":
                print(f"storage: {report}\n")
            else:
                print(table(report) + "\n")


if __name__ == "__main__":
    main()
