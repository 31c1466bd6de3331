"""Free TCP ports on loopback for the servers that tests and load runs start.

A port is chosen **below the kernel's ephemeral range** (``net.ipv4.ip_local_port_range``,
32768 to 60999 by default). Asking the kernel for port 0 returns a port from that range, and
between the moment such a port is chosen and the moment the server binds it, any
outgoing connection on the machine (a worker's Postgres pool, a client) may take it as its
local port; the two-worker test lost its second metrics port that way. Outside the range
only another listener can take a chosen port, and candidates are drawn at random, bound
to check that they are free, and never handed out twice by one process.
"""

from __future__ import annotations

import random
import socket
from collections.abc import Sequence
from pathlib import Path

LOWEST = 10_000  # below this, well-known and registered services are likelier
_given: set[int] = set()  # ports this process has handed out


def ephemeral_start(path: Path = Path("/proc/sys/net/ipv4/ip_local_port_range")) -> int:
    """The first port of the kernel's ephemeral range (32768 when it cannot be read)."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int = 1, *, offsets: Sequence[int] = (0,)) -> list[int]:
    """``count`` distinct ports ``p``, each with ``p + o`` free for every ``o`` in
    ``offsets`` (e.g. ``(0, 1)`` for two workers' consecutive ports, ``(0, 10_000)`` for a
    Redis Cluster node and its bus port); every port involved lies in ``[LOWEST,
    ephemeral_start())`` and none overlaps a port given out before by this process.

    Raises ``RuntimeError`` when no such ports are found in 10,000 draws.
    """
    top = ephemeral_start() - max(offsets)
    if top <= LOWEST:
        raise RuntimeError(f"no room below the ephemeral range for offsets {list(offsets)}")
    found: list[int] = []
    for _ in range(10_000):
        port = random.randrange(LOWEST, top)
        wanted = {port + o for o in offsets}
        if wanted & _given or not all(_bindable(p) for p in wanted):
            continue
        _given.update(wanted)
        found.append(port)
        if len(found) == count:
            return found
    raise RuntimeError(f"found only {len(found)} of {count} free ports")


def free_port() -> int:
    """One free port for one server (see :func:`free_ports`)."""
    return free_ports(1)[0]
