"""A real HTTP server on a free local port that plays Heartline badly: unsigned, signed by its own key,
tampering with or replaying answers signed by the real key.  What the client must refuse."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

COMPONENTS = '"@status" "content-digest" "@method";req "@path";req'


def jwks_of(kid: str, key: Ed25519PrivateKey) -> dict[str, Any]:
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": kid,
                      "x": base64.urlsafe_b64encode(raw).rstrip(b"=").decode()}]}


def sign(key: Ed25519PrivateKey, kid: str, status: int, body: bytes, method: str, path: str,
         nonce: str | None) -> dict[str, str]:
    """The headers Heartline's edge would send (RFC 9421 as docs/client.md describes it)."""
    digest = "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"
    components = COMPONENTS + (' "heartline-nonce";req' if nonce is not None else "")
    params = f'({components});created={int(time.time())};keyid="{kid}";alg="ed25519"'
    lines = [f'"@status": {status}', f'"content-digest": {digest}', f'"@method";req: {method}',
             f'"@path";req: {path}']
    if nonce is not None:
        lines.append(f'"heartline-nonce";req: {nonce}')
    lines.append(f'"@signature-params": {params}')
    signature = base64.b64encode(key.sign("\n".join(lines).encode())).decode()
    return {"Content-Digest": digest, "Signature-Input": f"heartline={params}",
            "Signature": f"heartline=:{signature}:"}


# A behaviour: (method, path, nonce, body) -> (status, headers, body bytes)
Behaviour = Callable[[str, str, str | None, dict[str, Any]], tuple[int, dict[str, str], bytes]]


def session_answers(path: str) -> tuple[int, dict[str, Any]]:
    """What a generous license server would answer."""
    later = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 3600))
    if path == "/v1/devices/activate":
        return 201, {"device_id": 1, "hardware_fingerprint": "x", "newly_activated": True, "active_devices": 1,
                     "device_limit": 999}
    if path == "/v1/sessions":
        return 201, {"session_token": "6f1c1d1e-0000-4000-8000-000000000001", "resumed": False,
                     "heartbeat_interval_s": 1, "heartbeat_timeout_s": 3600, "expires_at": later}
    if path.endswith("/heartbeat"):
        return 200, {"expires_at": later, "next_heartbeat_in_s": 1}
    if path.endswith("/end"):
        return 200, {"ended": True}
    return 200, {"valid": True, "code": "VALID"}


@contextmanager
def serve(behaviour: Behaviour) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            status, headers, payload = behaviour("POST", self.path, self.headers.get("Heartline-Nonce"), body)
            self.send_response(status)
            for name, value in {"Content-Type": "application/json", **headers}.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
