"""A real HTTP webhook receiver for the tests: verifies every request with the `standardwebhooks`
package and records what it got.  Runs a ThreadingHTTPServer on 127.0.0.1 in a thread.

`fail_next` makes the next N requests answer 500 (after recording them: the receiver saw the message
but said no, so the sender must send it again under the same webhook-id).
"""

from __future__ import annotations

import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError


@dataclass
class Received:
    webhook_id: str
    payload: dict[str, Any]
    verified: bool
    answered: int


@dataclass
class Receiver:
    secret: str
    port: int = 0
    received: list[Received] = field(default_factory=list)
    fail_next: int = 0
    _server: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

    def reserve_port(self) -> None:
        """Pick a free port with nothing listening on it yet (the receiver is 'down')."""
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                try:
                    Webhook(receiver.secret).verify(body, dict(self.headers.items()))
                    verified = True
                except WebhookVerificationError:
                    verified = False
                with receiver._lock:
                    status = 500 if receiver.fail_next > 0 else (200 if verified else 400)
                    receiver.fail_next = max(0, receiver.fail_next - 1)
                    receiver.received.append(Received(self.headers.get("webhook-id", ""), json.loads(body),
                                                      verified, status))
                answer = b'{"ok": true}' if status == 200 else b'{"error": "no"}'
                self.send_response(status)
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def accepted(self) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.answered == 200]

    def all(self) -> list[Received]:
        with self._lock:
            return list(self.received)
