"""The long-lived resources of one edge process, built in the app's lifespan and reached per request."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import asyncpg
import redis.asyncio as aioredis
from starlette.requests import Request

from edge.auth import ApiKeyGuard
from edge.signing import EdgeSigning
from heartline.license_cache import LicenseCache
from heartline.plane.sessions import SessionPlane
from heartline.settings import Settings


@dataclass(frozen=True)
class EdgeState:
    settings: Settings
    redis: aioredis.Redis
    pool: asyncpg.Pool
    plane: SessionPlane
    licenses: LicenseCache
    api_keys: ApiKeyGuard
    signing: EdgeSigning


def edge_state(request: Request) -> EdgeState:
    state: EdgeState = request.app.state.edge
    return state


def client_ip(request: Request) -> str:
    """The client's IP address, or '' when there is none (unix socket, test client).

    uvicorn puts X-Forwarded-For's address here only for trusted proxies.  Anything that is not an IP
    address is dropped: the worker stores it in an inet column."""
    host = request.client.host if request.client else ""
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return ""
