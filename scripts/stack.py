"""Runs the whole system (or a subset) as child processes, in the foreground.

``bin/up`` execs this after installing and migrating. Before starting anything it
checks the ports, PostgreSQL and Redis (one line saying what to do if one fails).
Each child's output is prefixed with its name. A child that exits is started again
after a back-off (1 s doubling to 30 s; reset after 30 s of running), with one log
line, while the others keep serving. Ctrl-C or SIGTERM stops all of them (terminate,
wait, kill after a timeout) and prints a plain summary. Load tests import
:func:`start_stack` and :meth:`Stack.stop` to run the same processes in their own
configuration (``env``).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import IO, TYPE_CHECKING

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: ``python scripts/stack.py``
    sys.path.insert(0, str(ROOT))

from shared.settings import Settings  # noqa: E402

if TYPE_CHECKING:
    from stubs import StubSettings

# Start order; stop order is the reverse. The stubs come first because the command
# API prices offers against them from its first request.
SERVICE_ORDER = ("stubs", "command_api", "worker", "projector", "query_api")
MODULES = {
    "stubs": "stubs",
    "command_api": "command_api",
    "worker": "command_api.worker",
    "projector": "query_api.projector",
    "query_api": "query_api",
}


class StackError(RuntimeError):
    """A process of the stack failed to start, to become healthy, or died."""


@dataclasses.dataclass(frozen=True)
class Service:
    name: str
    module: str
    health_url: str | None  # None: no HTTP endpoint; alive is all we can check


def _local(host: str) -> str:
    """Where to reach a server from this machine when it listens on ``host``."""
    return "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host


def _stub_settings(env: Mapping[str, str] | None = None) -> StubSettings:
    """The stubs' address settings (imported here: ``stubs`` pulls in the web framework,
    which ``--help`` must not need)."""
    from stubs import StubSettings

    return StubSettings.from_env(env)


def services(
    settings: Settings, stub: StubSettings, names: Iterable[str] = SERVICE_ORDER
) -> list[Service]:
    """The services named in ``names``, in start order, with their health URLs."""
    wanted = set(names)
    unknown = wanted - set(SERVICE_ORDER)
    if unknown:
        raise StackError(f"unknown service(s): {', '.join(sorted(unknown))}")
    serving = settings.serving
    health = {
        "stubs": f"http://{_local(stub.host)}:{stub.port}/health/live",
        "command_api": (
            f"http://{_local(serving.command_host)}:{serving.command_port}/health/live"
        ),
        "query_api": f"http://{_local(serving.query_host)}:{serving.query_port}/health/live",
    }
    return [Service(n, MODULES[n], health.get(n)) for n in SERVICE_ORDER if n in wanted]


def _say(message: str) -> None:
    """A line of our own on stderr; a closed terminal or pipe must not stop a shutdown."""
    with contextlib.suppress(OSError, ValueError):
        print(f"stack: {message}", file=sys.stderr, flush=True)


def _pump(name: str, stream: IO[bytes], out: IO[str], lock: threading.Lock) -> None:
    """Copy a child's output line by line, prefixed with its name. Keeps draining when
    ``out`` is gone, so a child never blocks on a full pipe."""
    prefix = f"{name:<11}| "
    for raw in iter(stream.readline, b""):
        line = raw.decode(errors="replace").rstrip("\n")
        with lock, contextlib.suppress(OSError, ValueError):
            out.write(prefix + line + "\n")
            out.flush()
    stream.close()


def _describe(code: int) -> str:
    """An exit code in words: 'exit code 1', 'signal SIGKILL'."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


@dataclasses.dataclass
class Stack:
    """Running child processes, in start order, and what it takes to start them again."""

    env: dict[str, str] = dataclasses.field(default_factory=lambda: dict(os.environ))
    output: IO[str] = sys.stdout
    procs: dict[str, subprocess.Popen[bytes]] = dataclasses.field(default_factory=dict)
    pumps: list[threading.Thread] = dataclasses.field(default_factory=list)
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    def spawn(self, service: Service) -> subprocess.Popen[bytes]:
        """Start (or start again) ``service`` with its output prefixed by its name."""
        proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", service.module],
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop them in order
        )
        self.procs[service.name] = proc
        assert proc.stdout is not None
        pump = threading.Thread(
            target=_pump, args=(service.name, proc.stdout, self.output, self.lock), daemon=True
        )
        pump.start()
        self.pumps.append(pump)
        return proc

    def dead(self) -> dict[str, int]:
        """Processes that have exited, with their exit codes."""
        return {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}

    def stop(self, timeout: float = 10.0) -> dict[str, int]:
        """Terminate every process (reverse start order), kill the ones left after
        ``timeout`` seconds; returns the exit codes (-9: had to be killed)."""
        for proc in reversed(self.procs.values()):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + timeout
        for proc in reversed(self.procs.values()):
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for pump in self.pumps:
            pump.join(timeout=2.0)
        return {n: p.returncode for n, p in self.procs.items()}


def wait_healthy(
    url: str,
    proc: subprocess.Popen[bytes],
    timeout: float,
    cancelled: Callable[[], bool] = lambda: False,
) -> None:
    """Block until ``url`` answers 200; fail if ``proc`` exits or time runs out."""
    import httpx  # here, so that ``--help`` answers without the project's packages

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"{url}: process exited with {proc.returncode} before answering")
        if cancelled():
            raise StackError("cancelled")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise StackError(f"{url} did not answer 200 within {timeout:.0f}s")


def start_stack(
    names: Sequence[str] = SERVICE_ORDER,
    env: Mapping[str, str] | None = None,
    *,
    health_timeout: float = 60.0,
    output: IO[str] | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> Stack:
    """Start the named services in order and wait until each HTTP one is healthy.

    ``env`` (default: this process's environment) is what every child gets; the
    SCOOTERS_* variables in it also give the ports to wait on. ``output=None`` prefixes
    the children's output onto stdout. On any failure the started processes are
    stopped and :class:`StackError` is raised.
    """
    child_env = dict(os.environ if env is None else env)
    child_env.setdefault("PYTHONUNBUFFERED", "1")
    settings = Settings.from_env(child_env)
    stack = Stack(env=child_env, output=output if output is not None else sys.stdout)
    try:
        for service in services(settings, _stub_settings(child_env), names):
            proc = stack.spawn(service)
            if service.health_url is not None:
                try:
                    wait_healthy(service.health_url, proc, health_timeout, cancelled)
                except StackError as exc:
                    if proc.poll() is not None:
                        raise StackError(
                            f"{service.name} exited with {_describe(proc.returncode)} during"
                            " start (its last lines are above)"
                        ) from None
                    raise StackError(f"{service.name}: {exc}") from None
        time.sleep(0.5)  # a process without HTTP that fails at import shows it here
        if dead := stack.dead():
            failed = ", ".join(f"{n} ({_describe(c)})" for n, c in dead.items())
            raise StackError(f"exited during start: {failed} (its last lines are above)")
    except BaseException:
        stack.stop()
        raise
    return stack


# The services that cannot start without PostgreSQL (the query API and the projector
# live with Redis down: reads fall back to Postgres, projection retries).
NEEDS_POSTGRES = frozenset({"command_api", "worker", "projector", "query_api"})


def check_postgres(settings: Settings, timeout: float = 5.0) -> None:
    """Raise :class:`shared.infra.failures.FailureError` (one line) unless PostgreSQL accepts
    a connection of the project's role within ``timeout`` seconds."""
    import asyncio

    import asyncpg

    from shared.infra.failures import FailureError, explain

    async def connect() -> None:
        conn = await asyncpg.connect(settings.db.url, timeout=timeout)
        await conn.close()

    try:
        asyncio.run(connect())
    except Exception as exc:
        reason = explain(exc, settings.db.url, settings.redis.url)
        raise FailureError(reason or f"PostgreSQL: {exc!r}") from None


def preflight(settings: Settings, stub: StubSettings, names: Sequence[str]) -> None:
    """Check what the named services need before starting any: their ports are free,
    PostgreSQL accepts the project's role, Redis answers. Raises
    :class:`shared.infra.failures.FailureError` with one line saying what to do."""
    from shared.infra.failures import FailureError, check_port_free, explain

    serving = settings.serving
    ports = {
        "stubs": (stub.host, stub.port, "stubs", "SCOOTERS_STUBS_PORT"),
        "command_api": (
            serving.command_host,
            serving.command_port,
            "command API",
            "SCOOTERS_COMMAND_PORT",
        ),
        "query_api": (serving.query_host, serving.query_port, "query API", "SCOOTERS_QUERY_PORT"),
    }
    if settings.read.projector_metrics_port:
        ports["projector"] = (
            serving.query_host,
            settings.read.projector_metrics_port,
            "projector /metrics",
            "SCOOTERS_PROJECTOR_METRICS_PORT (0 turns it off)",
        )
    for name in names:
        if name in ports:
            check_port_free(*ports[name])
    wanted = set(names)
    if wanted & NEEDS_POSTGRES:
        check_postgres(settings)
    if wanted & {"projector", "query_api"}:
        import redis

        client = redis.Redis.from_url(settings.redis.url, socket_connect_timeout=5)
        try:
            client.ping()
        except Exception as exc:
            reason = explain(exc, settings.db.url, settings.redis.url)
            raise FailureError(reason or f"Redis: {exc!r}") from None
        finally:
            client.close()


@dataclasses.dataclass
class Restarts:
    """Restart policy of one service: back off 1, 2, 4... up to ``max_delay`` seconds
    between restarts; a run of ``stable_after`` seconds counts as healthy again
    (as compose's ``restart: unless-stopped`` or systemd's ``Restart=``)."""

    first_delay: float = 1.0
    max_delay: float = 30.0
    stable_after: float = 30.0
    count: int = 0
    delay: float = 0.0
    started_at: float = dataclasses.field(default_factory=time.monotonic)
    due: float | None = None  # when to start it again; None while it runs

    def died(self, now: float) -> float:
        """Schedule the next start after a death at ``now``; returns the delay."""
        if now - self.started_at >= self.stable_after:
            self.delay = 0.0
        self.delay = min(self.max_delay, self.delay * 2 if self.delay else self.first_delay)
        self.count += 1
        self.due = now + self.delay
        return self.delay

    def postpone(self, now: float) -> float:
        """Not restarted yet (what it needs is down): the next try after a longer delay."""
        self.delay = min(self.max_delay, max(self.delay, self.first_delay) * 2)
        self.due = now + self.delay
        return self.delay


def supervise(
    stack: Stack,
    names: Sequence[str],
    stopping: threading.Event,
    *,
    first_delay: float = 1.0,
    max_delay: float = 30.0,
) -> None:
    """Until ``stopping`` is set: a process that exits is started again after a back-off,
    with one log line per death and per restart; the others keep running. A process
    that needs PostgreSQL is not restarted while PostgreSQL is down (one line per
    back-off interval says so), so a database outage is no crash loop of tracebacks."""
    from shared.infra.failures import FailureError

    settings = Settings.from_env(stack.env)
    by_name = {s.name: s for s in services(settings, _stub_settings(stack.env), names)}
    policy = {n: Restarts(first_delay=first_delay, max_delay=max_delay) for n in stack.procs}
    while not stopping.is_set():
        now = time.monotonic()
        for name, proc in list(stack.procs.items()):
            state = policy[name]
            if state.due is None and proc.poll() is not None:
                delay = state.died(now)
                _say(
                    f"{name} (pid {proc.pid}) exited with {_describe(proc.returncode)};"
                    f" restarting in {delay:.0f}s (restart {state.count})"
                )
            elif state.due is not None and now >= state.due:
                if name in NEEDS_POSTGRES:
                    try:
                        check_postgres(settings, timeout=2.0)
                    except FailureError as exc:
                        delay = state.postpone(time.monotonic())
                        _say(f"{name} waits {delay:.0f}s more before its restart: {exc}")
                        continue
                state.due = None
                state.started_at = now
                new = stack.spawn(by_name[name])
                _say(f"{name} started again (pid {new.pid})")
        stopping.wait(0.2)


def _summary(codes: Mapping[str, int]) -> str:
    """What the stop did, in plain words: SIGTERM exits are the normal case."""
    clean = [n for n, c in codes.items() if c in (0, -signal.SIGTERM, -signal.SIGINT)]
    killed = [n for n, c in codes.items() if c == -signal.SIGKILL]
    other = [f"{n} ({_describe(c)})" for n, c in codes.items() if n not in clean + killed]
    parts = [f"stopped {', '.join(clean)}" if clean else "stopped"]
    if killed:
        parts.append(f"killed after the stop timeout: {', '.join(killed)}")
    if other:
        parts.append(f"exited with an error: {', '.join(other)}")
    return "; ".join(parts)


def run(names: Sequence[str], *, health_timeout: float, stop_timeout: float) -> int:
    """Run the stack in the foreground, restarting what dies, until SIGINT/SIGTERM (exit 0).
    Exit 1 when it cannot start."""
    from shared.infra.failures import FailureError

    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        preflight(Settings.from_env(), _stub_settings(), names)
    except FailureError as exc:
        _say(str(exc))
        return 1
    try:
        stack = start_stack(names, health_timeout=health_timeout, cancelled=stopping.is_set)
    except StackError as exc:
        if stopping.is_set():
            return 0
        _say(f"{exc}; stopped the others")
        return 1
    try:
        pids = ", ".join(f"{n} (pid {p.pid})" for n, p in stack.procs.items())
        _say(f"running {pids}; a process that exits is restarted; Ctrl-C stops all")
        supervise(stack, names, stopping)
        _say("stopping")
    finally:  # whatever happened above, no child outlives us
        codes = stack.stop(stop_timeout)
    _say(_summary(codes))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bin/up",
        description=(
            "Install what is missing (bin/_install), migrate the database, then run the"
            " whole system in the foreground: stubs :3629, command API :8000, worker,"
            " projector, query API :8001 (ports from SCOOTERS_* settings). A process that"
            " exits is restarted with a back-off (1 s doubling to 30 s); Ctrl-C stops all."
        ),
    )
    parser.add_argument(
        "--only",
        default=",".join(SERVICE_ORDER),
        help=f"comma-separated subset of: {','.join(SERVICE_ORDER)}",
    )
    parser.add_argument("--health-timeout", type=float, default=60.0, help="seconds per start")
    parser.add_argument(
        "--stop-timeout", type=float, default=10.0, help="seconds before a kill on stop"
    )
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(SERVICE_ORDER)
    if unknown or not names:
        parser.error(f"--only takes names from: {','.join(SERVICE_ORDER)}")
    return run(names, health_timeout=args.health_timeout, stop_timeout=args.stop_timeout)


if __name__ == "__main__":
    sys.exit(main())
