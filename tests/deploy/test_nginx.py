"""The repository's nginx configuration, for real: nginx on loopback with a certificate made here, in
front of a running edge and admin, with client calls over HTTPS.

Loopback has many addresses, which lets one machine play three hosts: clients connect from 127.0.0.2
(through nginx) or 127.0.0.3 (directly), nginx reaches the edge from 127.0.0.1, and only 127.0.0.1 is a
trusted proxy of the edge.  nginx comes from Debian's `nginx-light` package (any nginx with the ssl module).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ipaddress
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import redis.asyncio as aioredis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from shared_support import process_env

from admin.security.keys import new_key
from heartline import apikeys
from heartline.devstack import free_port
from heartline.plane import keys
from heartline.plane.events import SessionEventKind, session_event_from_fields

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "nginx" / "templates" / "default.conf.template"
SHARDS = 4
THROUGH_NGINX_FROM = "127.0.0.2"
DIRECT_FROM = "127.0.0.3"
FORGED = "203.0.113.9"


def find_nginx() -> str | None:
    for candidate in (shutil.which("nginx"), "/usr/sbin/nginx", "/usr/local/nginx/sbin/nginx"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


NGINX = find_nginx()
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx-light)")


def render_template(values: dict[str, str]) -> str:
    """What the nginx image's envsubst does with the template: ${NGINX_*} replaced, nginx's $vars kept."""
    text = TEMPLATE.read_text()
    used = set(re.findall(r"\$\{(NGINX_[A-Z_]+)\}", text))
    assert used == set(values), f"template variables {sorted(used)} vs given {sorted(values)}"
    return re.sub(r"\$\{(NGINX_[A-Z_]+)\}", lambda m: values[m.group(1)], text)


def make_certificate(folder: Path) -> Path:
    """A self-signed certificate for localhost / 127.0.0.1 as fullchain.pem + privkey.pem; returns the cert."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "fullchain.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "privkey.pem").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    (folder / "privkey.pem").chmod(0o600)
    return folder / "fullchain.pem"


def _wait_http(url: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} process exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            httpx.get(url, timeout=1.0)
            return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f}s:\n{log.read_text()[-3000:]}")


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"nginx exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise RuntimeError(f"nginx did not listen on {port}:\n{log.read_text()[-3000:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_nginx(tmp: Path, https_port: int, http_port: int, edge_port: int, admin_port: int,
                **limits: str) -> tuple[subprocess.Popen[bytes], Path]:
    """nginx with the repository's template rendered for loopback (certificate in tmp/tls), and the
    edge's rate limit of compose unless `limits` (NGINX_EDGE_RATE, NGINX_EDGE_BURST) say otherwise."""
    assert NGINX is not None
    site = tmp / "heartline.conf"
    site.write_text(render_template({
        "NGINX_SERVER_NAME": "localhost",
        "NGINX_HTTPS_PORT": f"127.0.0.1:{https_port}",
        "NGINX_HTTP_PORT": f"127.0.0.1:{http_port}",
        "NGINX_TLS_DIR": str(tmp / "tls"),
        "NGINX_EDGE_UPSTREAM": f"127.0.0.1:{edge_port}",
        "NGINX_ADMIN_UPSTREAM": f"127.0.0.1:{admin_port}",
        "NGINX_EDGE_RATE": "50r/s", "NGINX_EDGE_BURST": "100", **limits,
    }))
    # The wrapper stands in for the image's /etc/nginx/nginx.conf: it includes the site inside http{}.
    # Workers run as root here only because the test's temp folders belong to root.
    main = tmp / "nginx.conf"
    main.write_text(f"""
{"user root;" if os.geteuid() == 0 else ""}
daemon off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    include {site};
}}
""")
    check = subprocess.run([NGINX, "-t", "-p", str(tmp), "-c", str(main)], capture_output=True, text=True,
                           check=False)
    assert check.returncode == 0, check.stderr
    nginx_log = tmp / "nginx.out"
    nginx = subprocess.Popen([NGINX, "-p", str(tmp), "-c", str(main)], stdout=open(nginx_log, "wb"),  # noqa: SIM115
                             stderr=subprocess.STDOUT, start_new_session=True)
    _wait_port(https_port, nginx, tmp / "error.log")
    return nginx, main


@dataclass(frozen=True)
class Stack:
    https_port: int
    http_port: int
    edge_port: int
    admin_port: int
    ca_file: Path
    nginx_conf: Path
    admin: subprocess.Popen[bytes]
    admin_log: Path

    def through_nginx(self) -> httpx.Client:
        """A client at 127.0.0.2 talking HTTPS to nginx, verifying its certificate."""
        context = ssl.create_default_context(cafile=str(self.ca_file))
        transport = httpx.HTTPTransport(local_address=THROUGH_NGINX_FROM, verify=context)
        return httpx.Client(transport=transport, base_url=f"https://localhost:{self.https_port}", timeout=10)

    def direct(self, source: str = DIRECT_FROM) -> httpx.Client:
        """A client talking to the edge itself, bypassing nginx."""
        transport = httpx.HTTPTransport(local_address=source)
        return httpx.Client(transport=transport, base_url=f"http://127.0.0.1:{self.edge_port}", timeout=10)


def _process_env(database_url: str, redis_url: str, **extra: str) -> dict[str, str]:
    return process_env({"HEARTLINE_DATABASE_URL": database_url, "HEARTLINE_REDIS_URL": redis_url,
                        "HEARTLINE_STREAM_SHARDS": SHARDS, "HEARTLINE_HEARTBEAT_MIN_GAP_MS": 0,
                        "HEARTLINE_TRUSTED_PROXIES": "127.0.0.1/32", "HEARTLINE_LOG_LEVEL": "WARNING", **extra})


@pytest.fixture(scope="module")
def stack(database_url: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    assert NGINX is not None
    tmp = tmp_path_factory.mktemp("nginx")
    edge_port, admin_port, https_port, http_port = free_port(), free_port(), free_port(), free_port()
    procs: list[subprocess.Popen[bytes]] = []
    try:
        edge_log = tmp / "edge.log"
        edge = subprocess.Popen(
            [sys.executable, "-m", "heartline", "edge"], cwd=ROOT, start_new_session=True,
            stdout=open(edge_log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
            env=_process_env(database_url, redis_url, HEARTLINE_EDGE_HOST="127.0.0.1",
                             HEARTLINE_EDGE_PORT=str(edge_port), HEARTLINE_EDGE_WORKERS="1"))
        procs.append(edge)
        admin_log = tmp / "admin.log"
        admin = subprocess.Popen(
            [sys.executable, "-m", "heartline", "admin"], cwd=ROOT, start_new_session=True,
            stdout=open(admin_log, "wb"), stderr=subprocess.STDOUT,  # noqa: SIM115
            env=_process_env(database_url, redis_url, HEARTLINE_ADMIN_HOST="127.0.0.1",
                             HEARTLINE_ADMIN_PORT=str(admin_port), HEARTLINE_DATA_DIR=str(tmp / "data"),
                             HEARTLINE_ADMIN_SECRET_KEY="test-secret-key-for-nginx-test",
                             HEARTLINE_ADMIN_TOTP_KEYS=new_key()))
        procs.append(admin)

        ca_file = make_certificate(tmp / "tls")
        nginx, main = start_nginx(tmp, https_port, http_port, edge_port, admin_port)
        procs.append(nginx)
        _wait_http(f"http://127.0.0.1:{edge_port}/healthz", edge, edge_log)
        # the admin is awaited only by the test that needs it (`admin_ready`): the edge's tests do not
        # depend on the admin starting
        yield Stack(https_port, http_port, edge_port, admin_port, ca_file, main, admin, admin_log)
    finally:
        for proc in reversed(procs):
            _stop(proc)


@pytest.fixture
async def licensed(db: asyncpg.Connection, redis: aioredis.Redis,
                   make_license: Callable[..., Any]) -> dict[str, Any]:
    lic = await make_license(device_limit=3, concurrent_sessions_limit=3)
    key = await apikeys.create_api_key(db, "nginx test")
    return {"license_id": lic["id"], "license_key": lic["license_key"], "headers": {"X-API-Key": key.key}}


async def started_ips(redis: aioredis.Redis, license_id: int) -> dict[str, str | None]:
    """Session token -> client ip, from the `started` events the edge wrote for this license."""
    shard = keys.shard_of(license_id, SHARDS)
    entries = await redis.xrange(keys.event_stream(shard))
    events = [session_event_from_fields(shard, eid, fields) for eid, fields in entries]
    return {e.session_token: e.client_ip for e in events
            if e.kind is SessionEventKind.STARTED and e.license_id == license_id}


async def test_client_calls_work_through_nginx_over_https(stack: Stack, licensed: dict[str, Any],
                                                          redis: aioredis.Redis) -> None:
    device = {"license_key": licensed["license_key"], "hardware_fingerprint": "fp-nginx-1"}
    with stack.through_nginx() as client:
        activated = client.post("/v1/devices/activate", headers=licensed["headers"],
                                json={**device, "device_name": "Workstation", "device_type": "desktop"})
        assert activated.status_code == 201, activated.text
        assert activated.json()["newly_activated"] is True

        started = client.post("/v1/sessions", headers=licensed["headers"], json=device)
        assert started.status_code == 201, started.text
        token = started.json()["session_token"]

        beat = client.post(f"/v1/sessions/{token}/heartbeat", headers=licensed["headers"],
                           json={"license_key": licensed["license_key"]})
        assert beat.status_code == 200, beat.text
        assert beat.json()["next_heartbeat_in_s"] > 0

        ended = client.post(f"/v1/sessions/{token}/end", headers=licensed["headers"],
                            json={"license_key": licensed["license_key"]})
        assert ended.status_code == 200, ended.text
        again = client.post(f"/v1/sessions/{token}/heartbeat", headers=licensed["headers"],
                            json={"license_key": licensed["license_key"]})
        assert again.status_code == 404
        assert again.json()["error"]["code"] == "SESSION_NOT_FOUND"
        assert client.get("/healthz").status_code == 200
        assert started.http_version == "HTTP/1.1"
    assert (await started_ips(redis, licensed["license_id"]))[token] == THROUGH_NGINX_FROM


async def test_client_ip_reaches_the_edge_through_nginx_and_cannot_be_forged(
        stack: Stack, licensed: dict[str, Any], redis: aioredis.Redis) -> None:
    def start(client: httpx.Client, fingerprint: str, forged: str | None = None) -> str:
        headers = dict(licensed["headers"])
        if forged:
            headers["X-Forwarded-For"] = forged
        res = client.post("/v1/sessions", headers=headers,
                          json={"license_key": licensed["license_key"], "hardware_fingerprint": fingerprint})
        assert res.status_code == 201, res.text
        return str(res.json()["session_token"])

    with stack.through_nginx() as client:
        via_nginx = start(client, "fp-a")
        via_nginx_forged = start(client, "fp-b", forged=FORGED)
    with stack.direct(DIRECT_FROM) as client:
        direct_forged = start(client, "fp-c", forged=FORGED)
    ips = await started_ips(redis, licensed["license_id"])
    # nginx passes the real peer address; a client's own X-Forwarded-For is replaced, not appended to
    assert ips[via_nginx] == THROUGH_NGINX_FROM
    assert ips[via_nginx_forged] == THROUGH_NGINX_FROM
    # straight to the edge from an address that is not a trusted proxy: the header is ignored
    assert ips[direct_forged] == DIRECT_FROM


async def test_edge_believes_forwarded_headers_from_a_trusted_proxy_address(
        stack: Stack, licensed: dict[str, Any], redis: aioredis.Redis) -> None:
    # the other half of the rule: from 127.0.0.1 (nginx's address, configured as trusted) it is believed
    with stack.direct("127.0.0.1") as client:
        res = client.post("/v1/sessions", headers={**licensed["headers"], "X-Forwarded-For": "198.51.100.7"},
                          json={"license_key": licensed["license_key"], "hardware_fingerprint": "fp-t"})
    assert res.status_code == 201, res.text
    assert (await started_ips(redis, licensed["license_id"]))[res.json()["session_token"]] == "198.51.100.7"


def test_plain_http_is_redirected_to_https(stack: Stack) -> None:
    res = httpx.get(f"http://127.0.0.1:{stack.http_port}/v1/sessions", headers={"Host": "localhost"})
    assert res.status_code == 308
    assert res.headers["location"] == "https://localhost/v1/sessions"


def test_tls_is_required_and_verified(stack: Stack) -> None:
    with stack.through_nginx() as client:
        res = client.get("/healthz")
    assert res.status_code == 200
    assert res.headers["strict-transport-security"].startswith("max-age=")
    # a client that does not know the certificate refuses it: nginx really serves the one made here
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"https://localhost:{stack.https_port}/healthz")


def test_metrics_are_not_public_but_served_inside(stack: Stack) -> None:
    with stack.through_nginx() as client:
        assert client.get("/metrics").status_code == 404
    with stack.direct() as client:
        assert client.get("/metrics").status_code == 200


@pytest.fixture
def admin_ready(stack: Stack) -> Stack:
    _wait_http(f"http://127.0.0.1:{stack.admin_port}/login/", stack.admin, stack.admin_log, timeout=90)
    return stack


def test_everything_outside_v1_goes_to_the_admin(admin_ready: Stack) -> None:
    stack = admin_ready
    with stack.through_nginx() as client:
        res = client.get("/login/")
        root = client.get("/")
    assert res.status_code == 200
    assert "password" in res.text.lower()
    # security headers, each once (nginx replaces the admin's own), the admin's CSP with its nonce too
    for name, value in (("x-frame-options", "DENY"), ("x-content-type-options", "nosniff"),
                        ("referrer-policy", "same-origin"), ("cache-control", "no-store"),
                        ("strict-transport-security", "max-age=63072000")):
        assert res.headers.get_list(name) == [value], name
    policies = res.headers.get_list("content-security-policy")
    assert any("'nonce-" in p for p in policies) and all("frame-ancestors 'none'" in p for p in policies)
    # the admin's redirects keep the browser on the HTTPS origin it came from
    assert root.is_redirect
    location = root.headers["location"]
    assert location.startswith(("/", f"https://localhost:{stack.https_port}/"))
    with stack.direct() as client:
        assert client.get("/login/").status_code == 404   # the edge has no such page


def test_bad_input_through_nginx_is_a_4xx_with_a_code(stack: Stack, licensed: dict[str, Any]) -> None:
    with stack.through_nginx() as client:
        res = client.post("/v1/sessions", headers=licensed["headers"], content=b"{not json")
        assert 400 <= res.status_code < 500
        assert res.json()["error"]["code"]
        huge = client.post("/v1/sessions", headers=licensed["headers"], content=b"x" * 100_000)
        assert huge.status_code == 413


def test_the_edge_calls_are_rate_limited_per_client_address(stack: Stack,
                                                            tmp_path_factory: pytest.TempPathFactory) -> None:
    """The template's limit, set tight (1 request a minute, bursts of 5) in an nginx of this test's own
    in front of the same edge: one address's sixth call within the minute is refused with 429
    RATE_LIMITED in the edge's error shape; another address is not affected."""
    tmp = tmp_path_factory.mktemp("nginx-limited")
    shutil.copytree(stack.ca_file.parent, tmp / "tls")
    https_port = free_port()
    nginx, _ = start_nginx(tmp, https_port, free_port(), stack.edge_port, stack.admin_port,
                           NGINX_EDGE_RATE="1r/m", NGINX_EDGE_BURST="5")
    context = ssl.create_default_context(cafile=str(stack.ca_file))

    def client(source: str) -> httpx.Client:
        return httpx.Client(base_url=f"https://localhost:{https_port}", timeout=30,
                            transport=httpx.HTTPTransport(local_address=source, verify=context))

    try:
        with client("127.0.0.4") as flood:
            answers = [flood.post("/v1/licenses/validate", json={}) for _ in range(10)]
        codes = [r.status_code for r in answers]
        assert codes[:6].count(401) == 6 and set(codes) == {401, 429}, codes  # 401: API_KEY_MISSING
        limited = answers[-1]
        assert limited.status_code == 429
        assert limited.json() == {"error": {"code": "RATE_LIMITED",
                                            "message": "Too many requests from this address; retry shortly."}}
        assert limited.headers["Retry-After"] == "1"
        with client("127.0.0.5") as other:
            assert other.post("/v1/licenses/validate", json={}).status_code == 401
    finally:
        _stop(nginx)
