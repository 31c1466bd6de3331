"""Failures of the machine around us, explained in one line with what to do.

A process that cannot reach PostgreSQL or Redis, is refused by them, finds pg_partman
missing or its port taken says so in one line (no traceback) through :func:`explain`;
one that retries logs through :class:`RetryLog`, once per interval instead of once per
attempt. Used by ``python -m migrations``, ``scripts/stack.py`` (``bin/up``), the
projector and the worker.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import sys
import time
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import asyncpg
import redis.exceptions

PG_MAJOR = 15


class FailureError(RuntimeError):
    """A failure of the environment, already explained: ``str(error)`` is the whole message."""


def _where(url: str, default_port: int) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or default_port}"


def _user(url: str) -> str:
    return urlsplit(url).username or "(none)"


def _cause(exc: BaseException) -> str:
    """The short reason of a low-level error: 'connection refused', 'timed out'..."""
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror.lower()
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


def explain_postgres(exc: BaseException, database_url: str) -> str | None:
    """One line for a PostgreSQL failure with what to do, or None if ``exc`` is not one.

    Covers: unreachable (refused, timeout, DNS), authentication refused or unknown
    role, missing database, and pg_partman not installed on the server.
    """
    where = _where(database_url, 5432)
    message = str(exc)
    refused = asyncpg.InvalidPasswordError | asyncpg.InvalidAuthorizationSpecificationError
    if isinstance(exc, refused):
        return (
            f"PostgreSQL at {where} refused user {_user(database_url)!r} ({_cause(exc)}): "
            "run bin/up once as root to create the development role, or set "
            "SCOOTERS_DATABASE_URL to a user and password the server accepts"
        )
    if isinstance(exc, asyncpg.InvalidCatalogNameError):
        return (
            f"PostgreSQL at {where}: {_cause(exc)}: run `python -m migrations` (bin/up does) "
            "or fix the database name in SCOOTERS_DATABASE_URL"
        )
    if "pg_partman" in message and ("not available" in message or "control file" in message):
        return (
            f"PostgreSQL at {where} has no pg_partman extension: install it on the server "
            f"(`apt-get install postgresql-{PG_MAJOR}-partman`; bin/up does when run as root)"
        )
    if isinstance(exc, OSError | TimeoutError | asyncpg.CannotConnectNowError) or (
        isinstance(exc, asyncpg.InterfaceError) and "connect" in message.lower()
    ):
        return (
            f"cannot reach PostgreSQL at {where} ({_cause(exc)}): start it "
            f"(`pg_ctlcluster {PG_MAJOR} main start`; bin/up does when run as root) "
            "or set SCOOTERS_DATABASE_URL"
        )
    return None


def explain_redis(exc: BaseException, redis_url: str) -> str | None:
    """One line for a Redis failure with what to do, or None if ``exc`` is not one."""
    where = _where(redis_url, 6379)
    if isinstance(exc, redis.exceptions.AuthenticationError) or (
        isinstance(exc, redis.exceptions.ResponseError)
        and str(exc).startswith(("NOAUTH", "WRONGPASS"))
    ):
        return f"Redis at {where} refused us ({_cause(exc)}): fix SCOOTERS_REDIS_URL's password"
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError | OSError):
        return (
            f"cannot reach Redis at {where} ({_cause(exc)}): start it "
            "(`redis-server --daemonize yes`; bin/up does when run as root) "
            "or set SCOOTERS_REDIS_URL"
        )
    return None


def explain(exc: BaseException, database_url: str, redis_url: str) -> str | None:
    """One line for ``exc`` if it is a known failure of PostgreSQL or Redis, else None."""
    if isinstance(exc, FailureError):
        return str(exc)
    if isinstance(exc, redis.exceptions.RedisError):
        return explain_redis(exc, redis_url)
    return explain_postgres(exc, database_url)


def port_in_use_message(host: str, port: int, what: str, setting: str) -> str:
    """The one line for a port another process already listens on."""
    return (
        f"port {port} on {host} ({what}) is already in use, perhaps by another bin/up: "
        f"stop that process, or choose another port with {setting}"
    )


def check_port_free(host: str, port: int, what: str, setting: str) -> None:
    """Raise :class:`FailureError` if ``host:port`` cannot be bound (someone listens there)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise FailureError(port_in_use_message(host, port, what, setting)) from None
            raise FailureError(f"cannot listen on {host}:{port} ({what}): {_cause(exc)}") from None


class RetryLog:
    """Logs a repeating failure once per ``interval_seconds``, not once per attempt.

    The first failure logs a line (with the explanation), later ones at most once per
    interval with the number of attempts since, and the first success after failures
    logs that it recovered. No traceback: the message is what the operator needs.
    """

    def __init__(
        self,
        log: logging.Logger,
        what: str,
        interval_seconds: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._log = log
        self._what = what
        self._interval = interval_seconds
        self._clock = clock
        self._failures = 0
        self._last_logged = 0.0

    @property
    def failures(self) -> int:
        """Consecutive failures so far (0 after a success)."""
        return self._failures

    def failed(self, reason: str) -> None:
        """Record one failed attempt; ``reason`` is a one-line explanation."""
        self._failures += 1
        now = self._clock()
        if self._failures == 1:
            self._log.error("%s failed: %s; retrying", self._what, reason)
            self._last_logged = now
        elif now - self._last_logged >= self._interval:
            self._log.error(
                "%s still failing after %d attempts: %s", self._what, self._failures, reason
            )
            self._last_logged = now

    def succeeded(self) -> None:
        """Record a success; logs the recovery if it follows failures."""
        if self._failures:
            self._log.warning("%s recovered after %d failed attempts", self._what, self._failures)
        self._failures = 0


@contextlib.contextmanager
def explained_exit(name: str, database_url: str, redis_url: str) -> Iterator[None]:
    """Around a process's main: a known failure ends it with one line and exit code 2.

    Prints ``"<name>: <explanation>"`` on stderr instead of a traceback; any other
    exception passes through unchanged.
    """
    try:
        yield
    except Exception as exc:
        reason = explain(exc, database_url, redis_url)
        if reason is None:
            raise
        print(f"{name}: {reason}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
