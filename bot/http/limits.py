"""Per-client limits of the HTTP surfaces: replies in progress and requests per minute, keyed on who calls
(the API key and the client address; the web page: the address), never on a client-chosen id."""
from __future__ import annotations

import collections
import hashlib
import time
from contextlib import asynccontextmanager

from aiohttp import web

from bot.http.errors import ApiError, http_text
from engine.types import Turn

MAX_TRACKED = 10_000      # callers remembered before those idle for a minute are forgotten


def client_id(request: web.Request, web_page: bool = False) -> str:
    """Who is calling: ``key:<hash of the key>@<address>`` (the web page without a key: ``web@<address>``)."""
    presented = request.headers.get("X-API-Key") or request.headers.get("Authorization", "")[7:].strip()
    ip = request.remote or "?"
    if web_page and not presented:
        return f"web@{ip}"
    digest = hashlib.sha256(presented.encode("utf-8", "replace")).hexdigest()[:12] if presented else "none"
    return f"key:{digest}@{ip}"


class _Window:
    """One kind of caller's limits: at most ``in_flight`` at once, at most ``per_minute`` started a minute."""

    def __init__(self, in_flight: int, per_minute: int):
        self.in_flight, self.per_minute = in_flight, per_minute
        self.running: collections.Counter[str] = collections.Counter()
        self.started: dict[str, collections.deque] = {}

    def enter(self, who: str, lang: str) -> None:
        if self.per_minute:
            now = time.monotonic()
            if len(self.started) > MAX_TRACKED:
                self._forget_idle(now)
            window = self.started.setdefault(who, collections.deque())
            while window and now - window[0] > 60:
                window.popleft()
            if len(window) >= self.per_minute:
                seconds = int(61 - (now - window[0]))
                raise ApiError(429, http_text("too_many_requests", lang, seconds=seconds))
            window.append(now)
        if self.in_flight and self.running[who] >= self.in_flight:
            raise ApiError(429, http_text("too_many_streams", lang, limit=self.in_flight))
        self.running[who] += 1

    def _forget_idle(self, now: float) -> None:
        for who in [w for w, q in self.started.items() if not q or now - q[-1] > 60]:
            del self.started[who]

    def leave(self, who: str) -> None:
        self.running[who] -= 1
        if self.running[who] <= 0:
            del self.running[who]


class ClientLimits:
    """The API's and the web page's limits, one per app (no module state)."""

    KEY = web.AppKey("client_limits", object)

    def __init__(self, http):
        self.max_wait_s = http.max_queue_wait_s
        self.api = _Window(http.per_client_in_flight, http.per_client_per_minute)
        self.web = _Window(http.web.per_ip_in_flight, http.web.per_ip_per_minute)

    @asynccontextmanager
    async def hold(self, request: web.Request, turn: Turn, web_page: bool = False):
        """Count one reply of the caller while it runs (429 in the caller's language when over a limit); the
        turn is marked as the HTTP surfaces' (low priority in the model's queue, a bounded wait for it)."""
        window = self.web if web_page else self.api
        who = client_id(request, web_page)
        window.enter(who, turn.speaker.lang or "en")
        turn.low_priority, turn.max_wait_s = True, self.max_wait_s
        try:
            yield who
        finally:
            window.leave(who)


def limits_of(request: web.Request) -> ClientLimits:
    return request.app[ClientLimits.KEY]
