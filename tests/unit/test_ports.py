"""The test servers' ports come from below the kernel's ephemeral range, so an outgoing
connection cannot take one between its choice and its bind (tests/ports.py)."""

from __future__ import annotations

import socket
from pathlib import Path

from tests.ports import ephemeral_start, free_ports


def test_ports_lie_below_the_ephemeral_range_and_are_never_given_twice() -> None:
    first = free_ports(20, offsets=(0, 1))
    second = free_ports(20, offsets=(0, 1))
    given = [p + o for p in first + second for o in (0, 1)]
    assert len(set(given)) == len(given) == 80
    assert all(10_000 <= p < ephemeral_start() for p in given)


def test_a_port_someone_listens_on_is_not_chosen(tmp_path: Path) -> None:
    (tmp_path / "range").write_text("10010\t60999\n")
    assert ephemeral_start(tmp_path / "range") == 10_010
    assert ephemeral_start(tmp_path / "missing") == 32_768
    taken = []
    try:
        for port in range(10_000, 10_200):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            s.listen()
            taken.append(s)
        held = {s.getsockname()[1] for s in taken}
        assert not held & set(free_ports(200, offsets=(0, 10_000)))
    finally:
        for s in taken:
            s.close()
