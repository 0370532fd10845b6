"""Simulated licensed programs, as locust users.

`LicensedProgram` behaves like a real program on a device: it activates its device, starts a session,
heartbeats at the interval the server gives it (divided by `--time-scale`), validates its license now and
then, sometimes quits and starts again, and starts a new session when told SESSION_NOT_FOUND.
`MisbehavingClient` supplies the refusals a real fleet produces: a second device over the session limit,
a third over the device limit, a suspended license, an unknown license key, a stale session token.

Answers the API defines for the situation count as successes (a 409 SESSION_LIMIT_REACHED where one is
due is the server doing its job); anything else is a failure.  Every 200 of a heartbeat is counted, so
that the run can check afterwards that PostgreSQL holds exactly those heartbeats.
"""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

from locust import FastHttpUser, task

from loadtests.scenarios.context import context_of
from loadtests.seed import SeededLicense


def _code(response: Any) -> str:
    try:
        return str(json.loads(response.content)["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return ""


class _Client(FastHttpUser):
    """What both kinds of client share: the API key and the calls, each checked against what is due."""

    abstract = True
    network_timeout = 30.0
    connection_timeout = 30.0

    def on_start(self) -> None:
        self.ctx = context_of(self.environment)
        self.headers = {"X-API-Key": self.ctx.seed.api_key, "Content-Type": "application/json"}
        self.interval_s = 30.0

    def call(self, path: str, body: dict[str, Any], name: str, expected: dict[int, set[str]]) -> tuple[int, Any]:
        """POST `body`; success when the status is expected and (for refusals) so is the error code."""
        with self.client.post(path, data=json.dumps(body), headers=self.headers, name=name,
                              catch_response=True) as response:
            status = response.status_code
            codes = expected.get(status)
            code = _code(response) if status >= 400 else ""
            if codes is None or (codes and code not in codes):
                response.failure(f"unexpected {status} {code or response.text[:120]}")
                self.ctx.count(f"{name} unexpected {status} {code}")
                return status, None
            response.success()
            self.ctx.count(f"{name} {status}{' ' + code if code else ''}")
            try:
                return status, json.loads(response.content) if response.content else None
            except ValueError:
                return status, None

    def activate(self, lic: SeededLicense, fingerprint: str, expected: dict[int, set[str]],
                 name: str = "activate") -> int:
        status, _ = self.call("/v1/devices/activate",
                              {"license_key": lic.key, "hardware_fingerprint": fingerprint,
                               "device_name": "load test", "device_type": "loadtest"},
                              name, expected)
        return status

    def open_session(self, lic: SeededLicense, fingerprint: str, expected: dict[int, set[str]],
              name: str = "start session") -> str | None:
        status, body = self.call("/v1/sessions", {"license_key": lic.key, "hardware_fingerprint": fingerprint,
                                                  "client_version": "loadtest/1"}, name, expected)
        if status in (200, 201) and body:
            self.interval_s = float(body.get("heartbeat_interval_s", self.interval_s))
            return str(body["session_token"])
        return None

    def heartbeat(self, lic: SeededLicense, token: str, expected: dict[int, set[str]]) -> int:
        status, body = self.call(f"/v1/sessions/{token}/heartbeat", {"license_key": lic.key}, "heartbeat",
                                 expected)
        if status == 200:
            self.ctx.count("heartbeat accepted", accepted=True)
            if body:
                self.interval_s = float(body.get("next_heartbeat_in_s", self.interval_s))
        return status

    def paced(self) -> float:
        """The server's heartbeat interval, compressed by the time scale, with a little jitter."""
        return self.interval_s / self.ctx.options.time_scale * random.uniform(1.0, 1.1)


HEARTBEAT_EXPECTED = {200: set(), 404: {"SESSION_NOT_FOUND"}, 429: {"HEARTBEAT_TOO_FREQUENT"}}


class LicensedProgram(_Client):
    """A licensed program on one device: activate, session, heartbeats, the odd validation and restart."""

    weight = 20

    def wait_time(self) -> float:
        return self.paced()

    def on_start(self) -> None:
        super().on_start()
        self.license = self.ctx.program_license()
        self.fingerprint = f"lt-{self.ctx.seed.run_id}-{uuid.uuid4().hex[:16]}"
        self.activate(self.license, self.fingerprint, {200: set(), 201: set()})
        self.token = self.open_session(self.license, self.fingerprint, {200: set(), 201: set()})
        # a program's first heartbeat comes one interval after its start, not at once
        self.wait()

    @task
    def keep_alive(self) -> None:
        """One heartbeat interval of the program's life."""
        if self.token is None:
            self.token = self.open_session(self.license, self.fingerprint, {200: set(), 201: set()})
            return
        status = self.heartbeat(self.license, self.token, HEARTBEAT_EXPECTED)
        if status == 404:
            # The session is gone (timed out, ended by an admin, plane restarted): start a new one.
            self.token = self.open_session(self.license, self.fingerprint, {200: set(), 201: set()},
                                    name="start session (reconnect)")
            return
        options = self.ctx.options
        if random.random() < options.validate_share:
            self.call("/v1/licenses/validate",
                      {"license_key": self.license.key, "hardware_fingerprint": self.fingerprint},
                      "validate", {200: set()})
        if random.random() < options.restart_share:
            self.end()
            self.token = self.open_session(self.license, self.fingerprint, {200: set(), 201: set()})

    def end(self) -> None:
        if self.token is not None:
            self.call(f"/v1/sessions/{self.token}/end", {"license_key": self.license.key}, "end session",
                      {200: set(), 404: {"SESSION_NOT_FOUND"}})
            self.token = None

    def on_stop(self) -> None:
        self.end()


class MisbehavingClient(_Client):
    """Produces the refusals of a real fleet, and keeps one legitimate session alive to be refused room."""

    weight = 1

    def wait_time(self) -> float:
        return self.paced()

    def on_start(self) -> None:
        super().on_start()
        # a license with 2 devices and 1 session: device A holds the session, B is refused a session,
        # C is refused activation
        self.license = self.ctx.refusal_license()
        prefix = f"lt-{self.ctx.seed.run_id}-refusal-{self.license.id}"
        self.holder, self.second, self.third = f"{prefix}-a", f"{prefix}-b", f"{prefix}-c"
        # A and B take the two device slots first, so C is always the one over the limit
        for fingerprint in (self.holder, self.second):
            self.activate(self.license, fingerprint, {200: set(), 201: set()})
        # another client may share this license and hold its one session already
        self.token = self.open_session(self.license, self.holder,
                                {200: set(), 201: set(), 409: {"SESSION_LIMIT_REACHED"}})
        self.wait()

    @task(4)
    def keep_holder_alive(self) -> None:
        if self.token is None:
            self.token = self.open_session(self.license, self.holder,
                                    {200: set(), 201: set(), 409: {"SESSION_LIMIT_REACHED"}})
        elif self.heartbeat(self.license, self.token, HEARTBEAT_EXPECTED) == 404:
            self.token = None

    @task
    def second_session_over_limit(self) -> None:
        expected = {409: {"SESSION_LIMIT_REACHED"}}
        if self.token is None:  # nobody holds the session right now: this start may get it
            expected = {200: set(), 201: set(), 409: {"SESSION_LIMIT_REACHED"}}
        token = self.open_session(self.license, self.second, expected, name="refusal: session limit")
        if token is not None:
            self.call(f"/v1/sessions/{token}/end", {"license_key": self.license.key}, "end session",
                      {200: set(), 404: {"SESSION_NOT_FOUND"}})

    @task
    def third_device_over_limit(self) -> None:
        self.activate(self.license, self.third, {409: {"DEVICE_LIMIT_REACHED"}}, name="refusal: device limit")

    @task
    def suspended_license(self) -> None:
        if self.ctx.suspended:
            lic = random.choice(self.ctx.suspended)
            self.open_session(lic, f"lt-{self.ctx.seed.run_id}-suspended", {403: {"LICENSE_SUSPENDED"}},
                       name="refusal: suspended license")

    @task
    def unknown_license(self) -> None:
        self.call("/v1/sessions", {"license_key": f"LT-UNKNOWN-{uuid.uuid4().hex[:12]}",
                                   "hardware_fingerprint": "lt-nobody"},
                  "refusal: unknown license", {404: {"LICENSE_NOT_FOUND"}})

    @task
    def stale_session(self) -> None:
        self.call(f"/v1/sessions/{uuid.uuid4()}/heartbeat", {"license_key": self.license.key},
                  "refusal: stale session", {404: {"SESSION_NOT_FOUND"}})
