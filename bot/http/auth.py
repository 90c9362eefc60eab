"""API key (X-API-Key or Bearer) and the optional client IP allow-list."""
from __future__ import annotations

import hmac
import ipaddress

from aiohttp import web

from bot.http.errors import json_error

OPEN_PATHS = ("/health", "/metrics")


def _presented_key(request: web.Request) -> str | None:
    key = request.headers.get("X-API-Key")
    if key:
        return key
    auth = request.headers.get("Authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


def is_open(path: str, extra_open: tuple[str, ...]) -> bool:
    # "/" opens the root page only: as a prefix it would open everything.
    return path in OPEN_PATHS or any(path == p or (p.endswith("/") and p != "/" and path.startswith(p))
                                     for p in extra_open)


def make_auth_middleware(api_key: str | None, allow_ips: tuple[str, ...], extra_open: tuple[str, ...] = ()):
    networks = [ipaddress.ip_network(n, strict=False) for n in allow_ips]

    @web.middleware
    async def auth(request: web.Request, handler):
        if networks:
            try:
                ip = ipaddress.ip_address(request.remote or "")
            except ValueError:
                return json_error(403, "client address not allowed")
            if not any(ip in n for n in networks):
                return json_error(403, "client address not allowed")
        if is_open(request.path, extra_open):
            return await handler(request)
        if api_key is None:
            return json_error(401, "this server has no BOT_API_KEY set; set it to use the API")
        presented = _presented_key(request)
        if presented is None:
            return json_error(401, "missing API key (X-API-Key header)")
        # aiohttp keeps undecodable header bytes as surrogates: such a key is simply a wrong one.
        if not hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), api_key.encode()):
            return json_error(401, "wrong API key")
        return await handler(request)

    return auth
