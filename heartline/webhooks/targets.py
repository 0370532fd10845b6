"""SSRF guard: a webhook target must be an http(s) URL whose host resolves to public addresses only.

Loopback, private (RFC 1918, ULA), link-local (cloud metadata at 169.254.169.254), shared, multicast,
reserved and unspecified addresses are refused unless HEARTLINE_WEBHOOK_ALLOW_PRIVATE_TARGETS is set.
The admin checks when an endpoint is saved, the worker again before each attempt (DNS may have changed);
redirects are never followed, so an answer cannot bounce a request inward.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from urllib.parse import urlsplit

from heartline.errors import HeartlineError


class WebhookTargetRefused(HeartlineError):
    status, code, message = 422, "WEBHOOK_TARGET_REFUSED", "This webhook URL cannot be used."


def host_and_port(url: str) -> tuple[str, int]:
    """The host and port of an http(s) URL; raises WebhookTargetRefused for anything else."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise WebhookTargetRefused(f"The URL is malformed: {exc}.") from None
    if parts.scheme not in ("http", "https"):
        raise WebhookTargetRefused("Webhook URLs must start with http:// or https://.")
    if not parts.hostname:
        raise WebhookTargetRefused("The URL has no host.")
    if parts.username or parts.password:
        raise WebhookTargetRefused("Webhook URLs may not carry a user name or password.")
    return parts.hostname, port or (443 if parts.scheme == "https" else 80)


def refused_address(address: str) -> bool:
    """True for an address no webhook may reach while private targets are not allowed."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


def check_addresses(host: str, addresses: list[str]) -> None:
    if not addresses:
        raise WebhookTargetRefused(f"The host {host} does not resolve.")
    bad = sorted({a for a in addresses if refused_address(a)})
    if bad:
        raise WebhookTargetRefused(
            f"The host {host} resolves to a loopback, private or reserved address ({', '.join(bad)}); "
            "such targets need HEARTLINE_WEBHOOK_ALLOW_PRIVATE_TARGETS.")


def check_target(url: str, *, allow_private: bool) -> None:
    """Refuse `url` (WebhookTargetRefused) unless it is http(s) and, when private targets are not allowed,
    resolves to public addresses only.  Blocking (DNS): for the admin; the worker uses the async one."""
    host, port = host_and_port(url)
    if allow_private:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise WebhookTargetRefused(f"The host {host} does not resolve.") from None
    check_addresses(host, [str(info[4][0]) for info in infos])


async def check_target_async(url: str, *, allow_private: bool) -> None:
    """check_target on the event loop's resolver."""
    host, port = host_and_port(url)
    if allow_private:
        return
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise WebhookTargetRefused(f"The host {host} does not resolve.") from None
    check_addresses(host, [str(info[4][0]) for info in infos])
