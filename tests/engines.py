"""Real engines started by the tests themselves: a Redis Cluster and a Postgres primary
with a hot-standby replica, on free ports in temporary directories, always torn down.

Used by the pytest fixtures of ``tests/engine_fixtures.py`` (started once per session)
and by the load tests (``python -m tests.load query --redis cluster --replica``).
Nothing here touches the machine's own Postgres (5432) or Redis (6379).

- :func:`redis_cluster`: three masters with one replica each (``redis-server
  --cluster-enabled yes`` and ``redis-cli --cluster create ... --cluster-replicas 1``),
  a short ``cluster-node-timeout`` so a killed master is replaced within seconds, no
  persistence (everything in Redis can be rebuilt, docs/scaling.md).
- :func:`postgres_pair`: ``initdb`` a primary, ``pg_basebackup -R`` a streaming hot
  standby from it. When run as root the servers run as the ``postgres`` OS user
  (``runuser``), which owns the data directories. pg_partman comes from the system's
  extension directory, so ``CREATE EXTENSION`` works on the primary.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tests.ports import free_ports

PG_BIN = Path(os.environ.get("SCOOTERS_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"


class EngineError(RuntimeError):
    """An engine did not start or become ready."""


def _wait(check: object, what: str, timeout: float, interval: float = 0.1) -> None:
    assert callable(check)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, subprocess.SubprocessError):
            pass
        time.sleep(interval)
    raise EngineError(f"{what}: not ready within {timeout}s")


# --- Redis Cluster ----------------------------------------------------------------------------


@dataclass
class RedisNode:
    port: int
    directory: Path
    proc: subprocess.Popen[bytes] | None = None


@dataclass
class RedisClusterEngine:
    """A running cluster; ``url`` is what ``SCOOTERS_REDIS_URL`` gets (any node will do:
    the client discovers the others)."""

    nodes: dict[int, RedisNode]
    node_timeout_ms: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{next(iter(self.nodes))}/0"

    @property
    def startup_urls(self) -> list[str]:
        return [f"redis://127.0.0.1:{p}/0" for p in self.nodes]

    def cli(self, port: int, *args: str, timeout: float = 5.0) -> str:
        done = subprocess.run(
            [REDIS_CLI, "-h", "127.0.0.1", "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return done.stdout

    def alive(self) -> list[int]:
        return [p for p, n in self.nodes.items() if n.proc is not None and n.proc.poll() is None]

    def roles(self) -> dict[int, str]:
        """``{port: "master" | "slave"}`` as the live nodes see it (failed nodes left out)."""
        port = self.alive()[0]
        roles: dict[int, str] = {}
        for line in self.cli(port, "cluster", "nodes").splitlines():
            parts = line.split()
            if len(parts) < 3 or "fail" in parts[2].split(","):
                continue
            node_port = int(parts[1].split("@")[0].rsplit(":", 1)[1])
            roles[node_port] = "master" if "master" in parts[2] else "slave"
        return roles

    def masters(self) -> list[int]:
        return sorted(p for p, r in self.roles().items() if r == "master")

    def healthy(self) -> bool:
        """Every live node says the cluster is ok and every master has a synced replica."""
        for port in self.alive():
            if "cluster_state:ok" not in self.cli(port, "cluster", "info"):
                return False
        for port in self.alive():
            info = self.cli(port, "info", "replication")
            if "role:slave" in info and "master_link_status:up" not in info:
                return False
        return True

    def kill(self, port: int) -> None:
        """SIGKILL one node (a crash: no goodbye to the others)."""
        node = self.nodes[port]
        assert node.proc is not None
        node.proc.send_signal(signal.SIGKILL)
        node.proc.wait()
        node.proc = None

    def restart(self, port: int) -> None:
        """Start a killed node again with its cluster config: it rejoins (as a replica
        when its slots were taken over)."""
        node = self.nodes[port]
        assert node.proc is None
        node.proc = _start_redis_node(node, self.node_timeout_ms)

    def stop(self) -> None:
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                node.proc.terminate()
        for node in self.nodes.values():
            if node.proc is not None:
                try:
                    node.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    node.proc.kill()
                    node.proc.wait()
                node.proc = None


def _start_redis_node(node: RedisNode, node_timeout_ms: int) -> subprocess.Popen[bytes]:
    args = [
        REDIS_SERVER,
        "--port", str(node.port),
        "--bind", "127.0.0.1",
        "--dir", str(node.directory),
        "--cluster-enabled", "yes",
        "--cluster-config-file", "nodes.conf",
        "--cluster-node-timeout", str(node_timeout_ms),
        # a replica may always take over, however long its link was down
        "--cluster-replica-validity-factor", "0",
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        "--logfile", str(node.directory / "redis.log"),
        "--maxclients", "10000",
    ]  # fmt: skip
    return subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)


@contextlib.contextmanager
def redis_cluster(
    masters: int = 3, replicas: int = 1, node_timeout_ms: int = 1_000, timeout: float = 60.0
) -> Iterator[RedisClusterEngine]:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each; stopped and
    its directory removed on exit, whatever happened."""
    base = Path(tempfile.mkdtemp(prefix="scooters-redis-cluster-"))
    ports = free_ports(masters * (1 + replicas), offsets=(0, 10_000))  # + the bus port
    engine = RedisClusterEngine({}, node_timeout_ms)
    try:
        for port in ports:
            directory = base / str(port)
            directory.mkdir()
            node = RedisNode(port, directory)
            node.proc = _start_redis_node(node, node_timeout_ms)
            engine.nodes[port] = node
        for port in ports:
            _wait(lambda p=port: engine.cli(p, "ping").strip() == "PONG", f"redis {port}", 10)
        created = subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *(f"127.0.0.1:{p}" for p in ports),
                "--cluster-replicas",
                str(replicas),
                "--cluster-yes",
            ],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if created.returncode != 0:
            raise EngineError(f"redis-cli --cluster create failed: {created.stdout[-2000:]}")
        _wait(engine.healthy, "redis cluster", timeout, interval=0.2)
        yield engine
    finally:
        engine.stop()
        shutil.rmtree(base, ignore_errors=True)


# --- one Redis server with a Unix socket ------------------------------------------------------


@dataclass
class RedisServer:
    """One Redis server listening on a loopback port and on a Unix socket."""

    port: int
    socket: Path
    pid: int

    def url(self, unix: bool) -> str:
        """Its address over the Unix socket (``unix``) or over TCP."""
        return f"unix://{self.socket}?db=0" if unix else f"redis://127.0.0.1:{self.port}/0"


@contextlib.contextmanager
def redis_server(timeout: float = 10.0) -> Iterator[RedisServer]:
    """A Redis server of its own (no persistence) on a free port and a Unix socket in a
    temporary directory (the machine's Redis may have no socket); stopped and its
    directory removed on exit. The load tests use it to compare TCP with the socket
    (issue 13) on the same server."""
    base = Path(tempfile.mkdtemp(prefix="scooters-redis-"))
    port = free_ports(1)[0]
    path = base / "redis.sock"
    args = [
        REDIS_SERVER,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--unixsocket", str(path),
        "--unixsocketperm", "700",
        "--dir", str(base),
        "--save", "",
        "--appendonly", "no",
        "--daemonize", "no",
        "--logfile", str(base / "redis.log"),
        "--maxclients", "10000",
    ]  # fmt: skip
    proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait(
            lambda: (
                subprocess.run(
                    [REDIS_CLI, "-s", str(path), "ping"], capture_output=True, text=True, timeout=2
                ).stdout.strip()
                == "PONG"
            ),
            f"redis {port}",
            timeout,
        )
        yield RedisServer(port, path, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(base, ignore_errors=True)


# --- Postgres primary + hot standby -----------------------------------------------------------


def _as_postgres(cmd: list[str]) -> list[str]:
    """Run ``cmd`` as the ``postgres`` OS user when we are root (Postgres refuses root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


def _run(cmd: list[str], what: str, timeout: float = 60.0) -> str:
    done = subprocess.run(
        _as_postgres(cmd), capture_output=True, text=True, timeout=timeout, check=False
    )
    if done.returncode != 0:
        raise EngineError(f"{what} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout


_PRIMARY_CONF = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{socket_dir}'
max_connections = 300
shared_buffers = 64MB
wal_level = replica
max_wal_senders = 5
wal_keep_size = 256MB
hot_standby = on
hot_standby_feedback = on
fsync = off
full_page_writes = off
synchronous_commit = on  # the default: WAL streams at commit, not at the next WAL-writer round
logging_collector = off
"""


@dataclass
class PostgresPair:
    """A primary and its streaming hot standby; DSNs name ``database`` on each."""

    base: Path
    primary_port: int
    replica_port: int
    running: dict[str, Path] = field(default_factory=dict)  # name → data directory

    def primary_dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.primary_port}/{database}"

    def replica_dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.replica_port}/{database}"

    def _psql(self, port: int, sql: str) -> str:
        return _run(
            [str(PG_BIN / "psql"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres",
             "-d", "postgres", "-Atc", sql],
            f"psql {sql!r}",
        ).strip()  # fmt: skip

    def pause_replay(self) -> None:
        """``pg_wal_replay_pause()`` on the replica: it keeps receiving WAL, applies none."""
        self._psql(self.replica_port, "SELECT pg_wal_replay_pause()")

    def resume_replay(self) -> None:
        self._psql(self.replica_port, "SELECT pg_wal_replay_resume()")

    def set_replica(self, name: str, value: str | None) -> None:
        """``ALTER SYSTEM SET name = value`` on the replica (``None``: RESET), reloaded."""
        if value is None:
            self._psql(self.replica_port, f"ALTER SYSTEM RESET {name}")
        else:
            self._psql(self.replica_port, f"ALTER SYSTEM SET {name} = '{value}'")
        self._psql(self.replica_port, "SELECT pg_reload_conf()")

    def caught_up(self) -> bool:
        """The replica has replayed everything the primary has written so far."""
        wanted = self._psql(self.primary_port, "SELECT pg_current_wal_lsn()")
        return (
            self._psql(self.replica_port, f"SELECT pg_last_wal_replay_lsn() >= '{wanted}'::pg_lsn")
            == "t"
        )

    def start(self, name: str, data: Path) -> None:
        _run(
            [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(self.base / f"{name}.log"),
             "-w", "-t", "60", "start"],
            f"pg_ctl start {name}",
            timeout=90,
        )  # fmt: skip
        self.running[name] = data

    def stop(self) -> None:
        for name in ("replica", "primary"):
            data = self.running.pop(name, None)
            if data is not None:
                with contextlib.suppress(EngineError, subprocess.TimeoutExpired):
                    _run(
                        [str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                         "stop"],
                        f"pg_ctl stop {name}",
                    )  # fmt: skip


@contextlib.contextmanager
def postgres_pair(timeout: float = 90.0) -> Iterator[PostgresPair]:
    """A Postgres 15 primary with a streaming hot-standby replica (``pg_basebackup -R``),
    tuned for tests (no fsync); stopped and removed on exit, whatever happened."""
    base = Path(tempfile.mkdtemp(prefix="scooters-pg-pair-"))
    if os.geteuid() == 0:
        shutil.chown(base, "postgres", "postgres")
    primary_port, replica_port = free_ports(2)
    pair = PostgresPair(base, primary_port, replica_port)
    primary, replica = base / "primary", base / "replica"
    try:
        _run(
            [str(PG_BIN / "initdb"), "-D", str(primary), "-U", "postgres", "--auth=trust",
             "--no-sync", "-E", "UTF8", "--locale=C"],
            "initdb",
        )  # fmt: skip
        with (primary / "postgresql.conf").open("a") as conf:
            conf.write(_PRIMARY_CONF.format(port=primary_port, socket_dir=base))
        pair.start("primary", primary)
        _run(
            [str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary_port),
             "-U", "postgres", "-D", str(replica), "-R", "-X", "stream", "-c", "fast",
             "--no-sync"],
            "pg_basebackup",
            timeout=timeout,
        )  # fmt: skip
        with (replica / "postgresql.auto.conf").open("a") as conf:
            conf.write(f"port = {replica_port}\n")
        pair.start("replica", replica)
        _wait(lambda: pair._psql(replica_port, "SELECT pg_is_in_recovery()") == "t", "replica", 30)
        yield pair
    finally:
        pair.stop()
        shutil.rmtree(base, ignore_errors=True)
