"""Which address an admin request comes from.

Behind nginx every request arrives from nginx's address; the client's is in X-Forwarded-For. That header
is believed only when the request comes from HEARTLINE_TRUSTED_PROXIES — the rule the edge follows
(uvicorn's forwarded_allow_ips) — so the sign-in limits key on the client and no one can claim another
address by sending the header themselves. Installed as WSGI middleware (as werkzeug's ProxyFix), so
Flask, Flask-Limiter and the logs all see the client's address in REMOTE_ADDR.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Any


def _address(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.strip())
    except ValueError:
        return None


class TrustedProxies:
    """WSGI middleware: REMOTE_ADDR and the scheme from X-Forwarded-For / -Proto of trusted proxies only.

    app: the WSGI app to call; trusted: networks (CIDR strings) whose forwarded headers are believed.
    """

    def __init__(self, app: Any, trusted: Iterable[str]) -> None:
        self.app = app
        self.networks = [ipaddress.ip_network(net, strict=False) for net in trusted]

    def _trusted(self, address: str | None) -> bool:
        parsed = _address(address or "")
        return parsed is not None and any(parsed in net for net in self.networks)

    def client(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The client's address: the right-most X-Forwarded-For entry that is not a trusted proxy."""
        if not forwarded_for or not self._trusted(peer):
            return peer
        hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
        for hop in reversed(hops):
            if _address(hop) is None:
                return peer            # a proxy wrote something that is not an address: believe none of it
            if not self._trusted(hop):
                return hop
        return hops[0] if hops else peer

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        peer = environ.get("REMOTE_ADDR")
        if self._trusted(peer):
            environ["REMOTE_ADDR"] = self.client(peer, environ.get("HTTP_X_FORWARDED_FOR"))
            proto = (environ.get("HTTP_X_FORWARDED_PROTO") or "").split(",")[-1].strip().lower()
            if proto in ("http", "https"):
                environ["wsgi.url_scheme"] = proto
        return self.app(environ, start_response)
