"""HAProxy in front of the APIs with the repo's template ``deploy/haproxy.cfg`` (ADR 0024),
for the overload benchmark (``python -m tests.load.overload --front haproxy``) and the
tests of the template.

HAProxy is a deployment artifact, not part of the project's set-up: it is used when the
``haproxy`` binary is on the PATH (``apt-get install haproxy``) and said to be missing
otherwise (:data:`MISSING`).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deploy" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy")
MISSING = (
    "haproxy is not installed (a deployment artifact, not part of the set-up: "
    "apt-get install haproxy to measure or test deploy/haproxy.cfg)"
)


@dataclass(frozen=True)
class Front:
    """Where HAProxy listens and what it forwards to: ``host:port`` each; ``*_maxconn``:
    requests the API box serves at once; ``threads``: HAProxy's threads."""

    query_front: str
    query_api: str
    query_maxconn: int
    command_front: str
    command_api: str
    command_maxconn: int
    retry_after: int = 2
    threads: int = 1

    def environment(self) -> dict[str, str]:
        """The variables the template reads (HAProxy expands them itself)."""
        return {
            "QUERY_FRONT": self.query_front,
            "QUERY_API": self.query_api,
            "QUERY_MAXCONN": str(self.query_maxconn),
            "COMMAND_FRONT": self.command_front,
            "COMMAND_API": self.command_api,
            "COMMAND_MAXCONN": str(self.command_maxconn),
            "RETRY_AFTER": str(self.retry_after),
            "HAPROXY_THREADS": str(self.threads),
        }


def check(front: Front) -> subprocess.CompletedProcess[str]:
    """``haproxy -c`` of the template with ``front``'s values (raises when not installed)."""
    if HAPROXY is None:
        raise RuntimeError(MISSING)
    return subprocess.run(
        [HAPROXY, "-c", "-f", str(TEMPLATE)],
        env=front.environment(),
        capture_output=True,
        text=True,
        timeout=30,
    )


def _listening(address: str) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def running_haproxy(front: Front, timeout: float = 10.0) -> Iterator[subprocess.Popen[bytes]]:
    """HAProxy in the foreground (``-db``) with the template; yields its process once both
    fronts accept connections, and stops it after."""
    if HAPROXY is None:
        raise RuntimeError(MISSING)
    proc = subprocess.Popen(
        [HAPROXY, "-db", "-f", str(TEMPLATE)],
        env=front.environment(),
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + timeout
        while not (_listening(front.query_front) and _listening(front.command_front)):
            if proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {proc.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError("haproxy did not listen in time")
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
