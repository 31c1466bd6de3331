"""The run command (scripts/stack.py, behind bin/up): supervision and one-line failures.

Each test runs the real script as a subprocess on free ports, its own database and key
prefix; failures are produced for real (a port taken, nobody listening, a role that
does not exist).
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from shared.settings import Settings
from stubs import StubSettings
from tests.conftest import ADMIN_DSN, ROOT
from tests.ports import free_port

STACK = [sys.executable, "scripts/stack.py"]


def _env(settings: Settings, stub: StubSettings | None = None) -> dict[str, str]:
    return {**os.environ, **settings.to_env(), **(stub or StubSettings()).to_env()}


@pytest.fixture
def stack_settings(base_settings: Settings, database: str) -> tuple[Settings, StubSettings]:
    """The whole system on free ports, with a small stub data set (starts faster)."""
    stub = StubSettings(port=free_port(), users=2_000, scooters=200)
    settings = base_settings.replace(
        external={"base_url": f"http://127.0.0.1:{stub.port}"},
        serving={"command_port": free_port(), "query_port": free_port()},
        read={"projector_metrics_port": free_port()},
        runtime={"log_level": "WARNING"},
    )
    return settings, stub


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@contextmanager
def running(
    settings: Settings, stub: StubSettings, log: Path
) -> Iterator[tuple[subprocess.Popen[bytes], dict[str, int]]]:
    """``scripts/stack.py`` running until it printed its 'running' line; yields the
    process and the children's pids. Stopped with SIGINT (Ctrl-C) at the end."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            STACK, cwd=ROOT, env=_env(settings, stub), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 180
        while "stack: running" not in log.read_text():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        line = next(x for x in log.read_text().splitlines() if x.startswith("stack: running"))
        pids = {name: int(pid) for name, pid in re.findall(r"(\w+) \(pid (\d+)\)", line)}
        yield proc, pids
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2.0).status_code
    except httpx.HTTPError:
        return 0


def test_a_killed_process_comes_back_while_the_others_keep_serving(
    stack_settings: tuple[Settings, StubSettings], tmp_path: Path
) -> None:
    s, stub = stack_settings
    command = f"http://127.0.0.1:{s.serving.command_port}/health/live"
    others = {
        "query_api": f"http://127.0.0.1:{s.serving.query_port}/health/live",
        "stubs": f"http://127.0.0.1:{stub.port}/health/live",
    }
    log = tmp_path / "stack.log"
    with running(s, stub, log) as (proc, pids):
        assert set(pids) == {"stubs", "command_api", "worker", "projector", "query_api"}
        assert _status(command) == 200
        os.kill(pids["command_api"], signal.SIGKILL)
        answers: list[int] = []
        deadline = time.monotonic() + 120
        while _status(command) != 200:
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            answers += [_status(url) for url in others.values()]
            time.sleep(0.2)
        assert answers
        assert set(answers) == {200}  # the others answered all along
        # a real command through the restarted process, signed in at the identity stub
        token = httpx.post(
            f"http://127.0.0.1:{stub.port}/auth/token", json={"sub": "user-1"}, timeout=10
        ).json()["access_token"]
        offer = httpx.post(
            f"http://127.0.0.1:{s.serving.command_port}/offers",
            json={"user_id": "user-1", "scooter_id": "scooter-1"},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert offer.status_code in {200, 201}, offer.text
        for name in ("stubs", "worker", "projector", "query_api"):
            assert _alive(pids[name]), f"{name} was restarted too"
        text = log.read_text()
        deaths = [x for x in text.splitlines() if "exited with" in x]
        assert deaths == [
            f"stack: command_api (pid {pids['command_api']}) exited with signal SIGKILL;"
            " restarting in 1s (restart 1)"
        ]
        restarted = re.search(r"stack: command_api started again \(pid (\d+)\)", text)
        assert restarted is not None
        new_pid = int(restarted.group(1))
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        assert proc.wait(timeout=30) == 0
    last = log.read_text().splitlines()[-1]
    assert last == "stack: stopped stubs, command_api, worker, projector, query_api"
    for pid in [*pids.values(), new_pid]:
        assert not _alive(pid)


def _run(args: list[str], env: dict[str, str]) -> tuple[int, list[str]]:
    done = subprocess.run(
        args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    lines = [x for x in (done.stdout + done.stderr).splitlines() if x.strip()]
    return done.returncode, lines


def test_port_in_use_is_one_line(base_settings: Settings) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, lines = _run(
            [*STACK, "--only", "stubs"], _env(base_settings, StubSettings(port=port))
        )
    assert code == 1
    assert lines == [
        f"stack: port {port} on 127.0.0.1 (stubs) is already in use, perhaps by another"
        " bin/up: stop that process, or choose another port with SCOOTERS_STUBS_PORT"
    ]


def test_redis_down_is_one_line(base_settings: Settings, database: str) -> None:
    port = free_port()
    settings = base_settings.replace(
        serving={"query_port": free_port()}, redis={"url": f"redis://127.0.0.1:{port}/0"}
    )
    code, lines = _run([*STACK, "--only", "query_api"], _env(settings))
    assert code == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"stack: cannot reach Redis at 127.0.0.1:{port} (")
    assert "SCOOTERS_REDIS_URL" in lines[0]


def test_postgres_unreachable_is_one_line(base_settings: Settings) -> None:
    port = free_port()
    settings = base_settings.replace(
        db={"url": f"postgresql://scooters:x@127.0.0.1:{port}/scooters"}
    )
    for args, prefix in (
        ([sys.executable, "-m", "migrations"], "migrations"),
        ([*STACK, "--only", "worker"], "stack"),
    ):
        code, lines = _run(args, _env(settings))
        assert code != 0
        assert len(lines) == 1, lines
        assert lines[0].startswith(f"{prefix}: cannot reach PostgreSQL at 127.0.0.1:{port} (")
        assert "SCOOTERS_DATABASE_URL" in lines[0]


def test_postgres_refusing_the_role_is_one_line(base_settings: Settings, run_id: str) -> None:
    server = ADMIN_DSN.rsplit("/", 1)[0].split("@", 1)[1]
    role = f"nobody_{run_id}"
    settings = base_settings.replace(db={"url": f"postgresql://{role}:wrong@{server}/scooters"})
    code, lines = _run([sys.executable, "-m", "migrations"], _env(settings))
    assert code == 2
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"migrations: PostgreSQL at {server} refused user '{role}' (")


def test_help_answers_without_setting_anything_up() -> None:
    # no uv, no project venv on PATH: --help must not need them
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
    code, lines = _run(["bin/up", "--help"], env)
    assert code == 0
    assert lines[0].startswith("usage: bin/up")
    assert not [x for x in lines if x.startswith("install:")]
    assert any("--only" in x for x in lines)
