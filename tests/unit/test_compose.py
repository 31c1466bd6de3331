"""What can be checked of compose.yaml and the Dockerfiles without a Docker engine."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.settings import Settings, variables
from stubs import StubSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_TEXT = (ROOT / "compose.yaml").read_text()
COMPOSE: dict[str, Any] = yaml.safe_load(COMPOSE_TEXT)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
OURS = ("migrate", "stubs", "command_api", "worker", "projector", "query_api")
HTTP_PORTS = {
    "stubs": StubSettings().port,
    "command_api": Settings().serving.command_port,
    "query_api": Settings().serving.query_port,
}
SETTING_NAMES = set(variables(Settings)) | set(variables(StubSettings))


def module_path(module: str) -> Path | None:
    """Where ``python -m module`` finds its code in the repo, if anywhere."""
    base = ROOT.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__main__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_all_processes_are_services() -> None:
    assert set(OURS) | {"postgres", "redis"} == set(SERVICES)


@pytest.mark.parametrize("name", OURS)
def test_command_runs_a_module_of_the_repo(name: str) -> None:
    command = SERVICES[name]["command"]
    assert command[:2] == ["python", "-m"], command
    assert module_path(command[2]) is not None, f"{name}: no module {command[2]} in the repo"


def test_every_scooters_variable_is_a_setting() -> None:
    used = set(re.findall(r"SCOOTERS_[A-Z0-9_]+", COMPOSE_TEXT))
    assert used, "compose.yaml configures nothing"
    assert used <= SETTING_NAMES, f"not settings: {sorted(used - SETTING_NAMES)}"


@pytest.mark.parametrize("name", OURS)
def test_environment_gives_valid_development_settings(name: str) -> None:
    env = {k: str(v) for k, v in SERVICES[name]["environment"].items()}
    settings = Settings.from_env(env)  # raises on a malformed value
    stub = StubSettings.from_env(env)
    assert settings.runtime.environment == "development"  # see the comment atop compose.yaml
    assert "@postgres:5432/" in settings.db.url
    assert settings.redis.url.startswith("redis://redis:6379")
    assert settings.external.base_url == f"http://stubs:{stub.port}"
    # inside a container a server must listen beyond loopback for its port to publish
    for host in (stub.host, settings.serving.command_host, settings.serving.query_host):
        assert host == "0.0.0.0"


@pytest.mark.parametrize(("name", "port"), HTTP_PORTS.items())
def test_published_ports_match_the_settings_defaults(name: str, port: int) -> None:
    assert SERVICES[name]["ports"] == [f"{port}:{port}"]
    assert f"127.0.0.1:{port}/health/live" in " ".join(SERVICES[name]["healthcheck"]["test"])


@pytest.mark.parametrize("name", ["postgres", "redis", *HTTP_PORTS])
def test_servers_have_healthchecks(name: str) -> None:
    check = SERVICES[name]["healthcheck"]
    assert check["test"][0] == "CMD"
    assert check["retries"] > 0


def test_depends_on_targets_exist_with_fitting_conditions() -> None:
    for name, service in SERVICES.items():
        for target, spec in service.get("depends_on", {}).items():
            assert target in SERVICES, f"{name} depends on unknown {target}"
            expected = (
                "service_completed_successfully" if target == "migrate" else "service_healthy"
            )
            assert spec["condition"] == expected, f"{name} -> {target}"
            if expected == "service_healthy":
                assert "healthcheck" in SERVICES[target], f"{target} has no healthcheck"
    for name in ("command_api", "worker", "projector", "query_api"):
        assert "migrate" in SERVICES[name]["depends_on"], f"{name} may start before migrations"


def test_build_files_exist_and_copy_what_runs() -> None:
    for name, service in SERVICES.items():
        build = service.get("build")
        if build is None:
            continue
        context = ROOT / build["context"]
        assert (context / build["dockerfile"]).is_file(), f"{name}: no {build['dockerfile']}"
    dockerfile = (ROOT / "Dockerfile").read_text()
    copied = {
        src
        for line in dockerfile.splitlines()
        if line.startswith("COPY ")
        for src in line.split()[1:-1]
    }
    for src in copied:
        assert (ROOT / src).exists(), f"Dockerfile copies missing {src}"
    for name in OURS:
        package = SERVICES[name]["command"][2].split(".")[0]
        assert package in copied, f"the image lacks {package}/ for {name}"
    assert "uv sync --frozen" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not set(ignored) & copied
