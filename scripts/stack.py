"""Runs the whole system (or a subset) as child processes, in the foreground.

``bin/up`` execs this after installing and migrating. Each child's output is
prefixed with its name; Ctrl-C or SIGTERM stops all of them (terminate, wait, kill
after a timeout); if one dies unexpectedly the rest are stopped and the exit code is
non-zero. Load tests import :func:`start_stack` and :meth:`Stack.stop` to run the
same processes in their own configuration (``env``).
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
from typing import IO

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: ``python scripts/stack.py``
    sys.path.insert(0, str(ROOT))

from shared.settings import Settings  # noqa: E402
from stubs import StubSettings  # noqa: E402

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


def services(
    settings: Settings, stub: StubSettings, names: Iterable[str] = SERVICE_ORDER
) -> list[Service]:
    """The services named in ``names``, in start order, with their health URLs."""
    wanted = set(names)
    unknown = wanted - set(SERVICE_ORDER)
    if unknown:
        raise StackError(f"unknown service(s): {', '.join(sorted(unknown))}")
    health = {
        "stubs": f"http://{_local(stub.host)}:{stub.port}/health/live",
        "command_api": (
            f"http://{_local(settings.serving.command_host)}:{settings.serving.command_port}/health/live"
        ),
        "query_api": f"http://{_local(settings.serving.query_host)}:{settings.serving.query_port}/health/live",
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


@dataclasses.dataclass
class Stack:
    """Running child processes, in start order."""

    procs: dict[str, subprocess.Popen[bytes]] = dataclasses.field(default_factory=dict)
    pumps: list[threading.Thread] = dataclasses.field(default_factory=list)

    def dead(self) -> dict[str, int]:
        """Processes that have exited, with their exit codes."""
        return {n: p.returncode for n, p in self.procs.items() if p.poll() is not None}

    def stop(self, timeout: float = 10.0) -> dict[str, int]:
        """Terminate every process (reverse start order), kill the ones left after
        ``timeout`` seconds; returns the exit codes."""
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
    out = output if output is not None else sys.stdout
    lock = threading.Lock()
    stack = Stack()
    try:
        for service in services(settings, StubSettings.from_env(child_env), names):
            proc = subprocess.Popen(  # noqa: S603 - our own interpreter and module
                [sys.executable, "-m", service.module],
                cwd=ROOT,
                env=child_env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us only; we stop them in order
            )
            stack.procs[service.name] = proc
            assert proc.stdout is not None
            pump = threading.Thread(
                target=_pump, args=(service.name, proc.stdout, out, lock), daemon=True
            )
            pump.start()
            stack.pumps.append(pump)
            if service.health_url is not None:
                wait_healthy(service.health_url, proc, health_timeout, cancelled)
        time.sleep(0.5)  # a process without HTTP that fails at import shows it here
        if dead := stack.dead():
            raise StackError(f"exited during start: {dead}")
    except BaseException:
        stack.stop()
        raise
    return stack


def run(names: Sequence[str], *, health_timeout: float, stop_timeout: float) -> int:
    """Run the stack in the foreground until a signal (exit 0) or a death (exit 1)."""
    stopping = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        stack = start_stack(names, health_timeout=health_timeout, cancelled=stopping.is_set)
    except StackError as exc:
        if stopping.is_set():
            return 0
        _say(str(exc))
        return 1
    dead: dict[str, int] = {}
    try:
        _say(f"running {', '.join(stack.procs)}; Ctrl-C stops")
        while not stopping.is_set() and not (dead := stack.dead()):
            stopping.wait(0.2)
        if dead:
            exits = ", ".join(f"{n} exited with {c}" for n, c in dead.items())
            _say(f"{exits}; stopping the rest")
        else:
            _say("stopping")
    finally:  # whatever happened above, no child outlives us
        codes = stack.stop(stop_timeout)
    _say(f"stopped {codes}")
    return 1 if dead else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--only",
        default=",".join(SERVICE_ORDER),
        help=f"comma-separated subset of: {','.join(SERVICE_ORDER)}",
    )
    parser.add_argument("--health-timeout", type=float, default=60.0)
    parser.add_argument("--stop-timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = set(names) - set(SERVICE_ORDER)
    if unknown or not names:
        parser.error(f"--only takes names from: {','.join(SERVICE_ORDER)}")
    return run(names, health_timeout=args.health_timeout, stop_timeout=args.stop_timeout)


if __name__ == "__main__":
    sys.exit(main())
