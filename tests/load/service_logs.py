"""The services' logs of a load run, and the guard that no answer was a 500.

Every run writes the stack's output (each line prefixed with its process's name by
``scripts/stack.py``) to a file. After the run :func:`check_run` counts the 5xx answers
the generator saw; any that is not 503 (a dependency down, an overloaded process) fails
the run, and so does any ``unhandled error`` the services logged (that is what a 500 is,
``shared/infra/problems.py``), each printed with its logged exception. So a 500 in a load
test is never again a number without a cause (docs/scaling.md, the replica run's 500s).

The logs are structlog's development format (logfmt, one event per line, line breaks
escaped: ``shared/infra/logs.py``); :func:`parse_line` reads them back.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

_PAIR = re.compile(r'([^\s=]+)=("(?:[^"\\]|\\.)*"|\S*)')
_UNESCAPE = re.compile(r"\\(.)")
_STATUS = re.compile(r"\bHTTP (\d{3})\b")
_FRAME = re.compile(r'^\s*File "')
_ADDRESS = re.compile(r"0x[0-9a-fA-F]+")
# how the development renderer writes a line break inside a value (escape_control_characters)
_LINE_BREAK = "\\x0a"


@dataclass(frozen=True)
class LogEvent:
    """One event a service logged: its process name and the event's fields."""

    service: str
    fields: dict[str, str]

    @property
    def level(self) -> str:
        return self.fields.get("level", "")

    @property
    def event(self) -> str:
        return self.fields.get("event", "")

    @property
    def exception(self) -> str:
        """The logged traceback, with its line breaks back ('' when none)."""
        return self.fields.get("exception", "").replace(_LINE_BREAK, "\n")

    @property
    def cause(self) -> str:
        """The last line of the traceback (the exception raised), or the event."""
        lines = [line for line in self.exception.splitlines() if line.strip()]
        return lines[-1].strip() if lines else self.event

    @property
    def kind(self) -> tuple[str, str, str]:
        """(service, exception without addresses, innermost frame): what groups events
        that are the same failure."""
        frames = [line.strip() for line in self.exception.splitlines() if _FRAME.match(line)]
        return self.service, _ADDRESS.sub("0x…", self.cause), frames[-1] if frames else ""


def parse_line(line: str) -> LogEvent | None:
    """``"query_api  | timestamp=… level=error event=…"`` as an event; None when the
    line is not a structured event (a stray print, a C library's message)."""
    service, sep, rest = line.partition("| ")
    if not sep:
        return None
    fields = {key: _unquote(value) for key, value in _PAIR.findall(rest)}
    if "event" not in fields or "level" not in fields:
        return None
    return LogEvent(service.strip(), fields)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
        return _UNESCAPE.sub(lambda m: "\n" if m.group(1) == "n" else m.group(1), value)
    return value


def read_events(path: Path) -> Iterator[LogEvent]:
    """The structured events in a run's log file, in order."""
    with path.open(errors="replace") as lines:
        for line in lines:
            event = parse_line(line.rstrip("\n"))
            if event is not None:
                yield event


def _is_error(event: LogEvent) -> bool:
    return event.level in {"error", "critical"}


def _is_unhandled(event: LogEvent) -> bool:
    """An answer 500 (``unhandled error``) or an error uvicorn caught in a request."""
    return _is_error(event) and (
        event.event == "unhandled error" or event.event.startswith("Exception in ASGI")
    )


def unhandled_errors(events: Iterable[LogEvent]) -> list[LogEvent]:
    """Events that are answers 500 (``unhandled error``) or errors uvicorn caught."""
    return [e for e in events if _is_unhandled(e)]


def other_errors(events: Iterable[LogEvent]) -> Counter[str]:
    """Error events that are no answer (a failed shutdown, a projector retry), by
    service and the event's first line: worth a look, not a failed run."""
    found: Counter[str] = Counter()
    for e in events:
        if _is_error(e) and not _is_unhandled(e):
            first = e.event.replace(_LINE_BREAK, "\n").split("\n")[0].strip()
            found[f"{e.service}: {_ADDRESS.sub('0x…', first)[:160]}"] += 1
    return found


def bad_statuses(reports: Iterable[dict[str, Any]]) -> Counter[str]:
    """The generator's 5xx answers other than 503, by error kind (``reports[i]["errors"]``
    keys such as ``"GET /orders/{id}: HTTP 500 internal_error"``)."""
    found: Counter[str] = Counter()
    for report in reports:
        for kind, count in report.get("errors", {}).items():
            match = _STATUS.search(kind)
            if match and match.group(1).startswith("5") and match.group(1) != "503":
                found[kind] += count
    return found


@dataclass
class Verdict:
    """What :func:`check_run` found: the bad answers and the logged exceptions."""

    bad_answers: Counter[str]
    errors: list[LogEvent] = field(default_factory=list)
    others: Counter[str] = field(default_factory=Counter)  # other error events, by kind

    @property
    def failed(self) -> bool:
        return bool(self.bad_answers or self.errors)


def check_run(reports: Iterable[dict[str, Any]], log_path: Path) -> Verdict:
    """The guard of a load run: 5xx answers other than 503, and the services' 500s."""
    events = list(read_events(log_path)) if log_path.exists() else []
    return Verdict(bad_statuses(reports), unhandled_errors(events), other_errors(events))


def print_other_errors(verdict: Verdict, out: IO[str]) -> None:
    """The error events that fail no run, one line per kind."""
    if verdict.others:
        print("\n== other errors the services logged (no answer was affected):", file=out)
    for kind, count in verdict.others.most_common():
        print(f"   {count:>6} x {kind}", file=out)


def print_verdict(verdict: Verdict, log_path: Path, out: IO[str]) -> None:
    """Say loudly what went wrong: each kind of bad answer, then each logged exception
    grouped by its cause, with one full traceback per cause."""
    total = sum(verdict.bad_answers.values())
    print(
        f"\n!! FAILED: {total} answers were 5xx other than 503, and the services logged "
        f"{len(verdict.errors)} unhandled errors (logs: {log_path})",
        file=out,
    )
    for kind, count in verdict.bad_answers.most_common():
        print(f"!!   {count:>6} x {kind}", file=out)
    groups: dict[tuple[str, str, str], list[LogEvent]] = {}
    for event in verdict.errors:
        groups.setdefault(event.kind, []).append(event)
    for (service, cause, where), events in groups.items():
        first = events[0]
        paths = Counter(e.fields.get("path", "?") for e in events)
        print(f"\n!! {len(events)} x {service}: {cause}\n!!   raised at {where}", file=out)
        print(
            f"!!   first at {first.fields.get('timestamp', '?')}, request "
            f"{first.fields.get('request_id', '?')} {first.fields.get('method', '')} "
            f"{first.fields.get('path', '')} ({len(paths)} paths); its traceback:",
            file=out,
        )
        print(first.exception or repr(first.fields), file=out)
    if total and not verdict.errors:
        print(
            "!! no unhandled error was logged: the 5xx did not come from our exception "
            "handler (look for the process's last lines in the log)",
            file=out,
        )


class Tee:
    """A text stream that writes to several (the log file and the terminal)."""

    def __init__(self, *streams: IO[str]) -> None:
        self._streams = streams

    def write(self, text: str) -> int:
        for stream in self._streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self._streams:
            stream.flush()
