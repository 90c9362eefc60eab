"""A fake Discord (REST API + gateway websocket) on 127.0.0.1 for the real discord.py client; aiohttp.

It keeps every message with its edit history, answers interactions the way
discord.py 2.7 expects (callback ``with_response`` JSON, ``attachment_size_limit``),
runs channel webhooks with avatars, can enforce a per-channel write limit with
X-RateLimit headers and 429s, inject 429s, drop the gateway and replay missed
events on RESUME (optionally redelivering the last one, as Discord may).
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

ALL_PERMISSIONS = (1 << 41) - 1
MANAGE_WEBHOOKS = 1 << 29
EPHEMERAL = 1 << 6


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000+00:00", time.gmtime())


def jresp(obj: Any, status: int = 200, headers: dict | None = None) -> web.Response:
    # discord.py parses JSON only when the header is exactly this (no "; charset=utf-8").
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    return web.Response(body=json.dumps(obj).encode(), status=status, headers=h)


def unknown_message() -> web.Response:
    return jresp({"message": "Unknown Message", "code": 10008}, 404)


@dataclass
class Inject:
    method: str
    pattern: re.Pattern
    times: int
    retry_after: float
    status: int = 429
    code: int = 0


@dataclass
class Interaction:
    id: int
    token: str
    channel_id: int
    payload: dict
    callback: dict | None = None
    original_id: int | None = None
    followups: list[int] = field(default_factory=list)
    choices: list | None = None
    sent_at: float = 0.0


class FakeDiscord:
    def __init__(self, *, manage_webhooks: bool = True, channel_limit: tuple[int, float] | None = None,
                 redeliver_on_resume: bool = False, channels: int = 3):
        self._ids = itertools.count(1)
        self.app_id = self.new_id()
        self.bot = {"id": str(self.app_id), "username": "llmbot", "discriminator": "0", "global_name": None,
                    "avatar": None, "bot": True}
        self.guild_id = self.new_id()
        self.channel_ids = [self.new_id() for _ in range(channels)]
        self.thread_id = self.new_id()
        self.manage_webhooks = manage_webhooks
        self.channel_limit = channel_limit
        self.redeliver_on_resume = redeliver_on_resume
        self.messages: dict[int, dict] = {}
        self.dm_channels: set[int] = set()
        self.history: dict[int, list[str]] = {}      # message id -> every content it had (creation first)
        self.times: dict[int, list[float]] = {}      # message id -> time.monotonic() of each of those
        self.requests: list[tuple[str, str, Any]] = []
        self.interactions: dict[str, Interaction] = {}
        self.webhooks: dict[int, dict] = {}
        self.avatars: dict[str, bytes] = {}          # avatar hash -> image bytes
        self.files: dict[int, tuple[str, bytes]] = {}
        self.commands: list[dict] = []
        self.events: list[tuple[int, str, dict]] = []
        self.seq = 0
        self.session_id = "s-" + str(self.new_id())
        self.ws: web.WebSocketResponse | None = None
        self.identifies = 0
        self.resumes = 0
        self.count_429 = 0
        self.noop_edits = 0
        self.typing: list[int] = []
        self.injects: list[Inject] = []
        self.forbidden_channels: set[int] = set()    # channels where the bot may not post (403 Missing Access)
        self._windows: dict[int, tuple[float, int]] = {}
        self._changed = asyncio.Event()
        self.runner: web.AppRunner | None = None
        self.port = 0

    # --- life cycle -------------------------------------------------------------------------------

    def new_id(self) -> int:
        """A snowflake of now (discord.py reads creation times, e.g. an interaction's age, from ids)."""
        return ((int(time.time() * 1000) - 1420070400000) << 22) | (next(self._ids) & 0x3FFFFF)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_base_url(self) -> str:
        return f"{self.base}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gateway"

    async def start(self) -> "FakeDiscord":
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/gateway", self._gateway)
        app.router.add_get("/files/{id}/{name}", self._file)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.runner is not None:
            await self.runner.cleanup()

    def _touch(self) -> None:
        self._changed.set()

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 30.0, what: str = "") -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = predicate()
            if value:
                return value
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {what or predicate}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.2))
            except asyncio.TimeoutError:
                pass

    # --- users, channels, guild -------------------------------------------------------------------

    def user(self, uid: int, name: str = "user") -> dict:
        return {"id": str(uid), "username": name, "discriminator": "0", "global_name": name, "avatar": None}

    def member(self, uid: int, name: str = "user", roles: tuple[int, ...] = ()) -> dict:
        return {"user": self.user(uid, name), "roles": [str(r) for r in roles], "joined_at": _now_iso(),
                "deaf": False, "mute": False, "flags": 0, "nick": None, "permissions": str(ALL_PERMISSIONS)}

    def channel(self, cid: int) -> dict:
        if cid == self.thread_id:
            return {"id": str(cid), "type": 11, "guild_id": str(self.guild_id), "parent_id": str(self.channel_ids[0]),
                    "name": "thread", "owner_id": "1", "message_count": 0, "member_count": 1,
                    "thread_metadata": {"archived": False, "auto_archive_duration": 1440,
                                        "archive_timestamp": _now_iso(), "locked": False}}
        return {"id": str(cid), "type": 0, "guild_id": str(self.guild_id), "name": f"ch{cid % 1000}",
                "position": 0, "permission_overwrites": [], "nsfw": False, "topic": None, "parent_id": None}

    def dm_channel_id(self, uid: int) -> int:
        self.dm_channels.add(uid + 1)
        return uid + 1

    def _guild(self) -> dict:
        perms = ALL_PERMISSIONS if self.manage_webhooks else ALL_PERMISSIONS & ~MANAGE_WEBHOOKS
        everyone = {"id": str(self.guild_id), "name": "@everyone", "permissions": str(perms), "position": 0,
                    "color": 0, "hoist": False, "managed": False, "mentionable": False, "flags": 0}
        return {
            "id": str(self.guild_id), "name": "guild", "icon": None, "owner_id": "1", "roles": [everyone],
            "channels": [self.channel(c) for c in self.channel_ids], "threads": [self.channel(self.thread_id)],
            "members": [{**self.member(self.app_id, "llmbot"), "user": self.bot}], "member_count": 2,
            "unavailable": False, "large": False, "features": [], "emojis": [], "stickers": [],
            "voice_states": [], "presences": [], "afk_timeout": 300, "verification_level": 0,
            "default_message_notifications": 0, "explicit_content_filter": 0, "mfa_level": 0,
            "system_channel_flags": 0, "premium_tier": 0, "preferred_locale": "en-US", "nsfw_level": 0,
            "premium_progress_bar_enabled": False, "joined_at": _now_iso(), "stage_instances": [],
            "guild_scheduled_events": [], "soundboard_sounds": [],
        }

    # --- gateway ----------------------------------------------------------------------------------

    async def _send(self, ws: web.WebSocketResponse, obj: dict) -> None:
        await ws.send_str(json.dumps(obj))

    async def dispatch(self, t: str, d: dict) -> int:
        self.seq += 1
        self.events.append((self.seq, t, d))
        if self.ws is not None and not self.ws.closed:
            try:
                await self._send(self.ws, {"op": 0, "t": t, "s": self.seq, "d": d})
            except ConnectionError:
                pass
        return self.seq

    async def drop_gateway(self, code: int = 4000) -> None:
        """Close the session's socket the way a network blip or a Discord restart does (resumable)."""
        ws, self.ws = self.ws, None
        if ws is not None:
            await ws.close(code=code)

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await self._send(ws, {"op": 10, "d": {"heartbeat_interval": 41250}})
        async for msg in ws:
            data = json.loads(msg.data)
            op, d = data.get("op"), data.get("d")
            if op == 1:
                await self._send(ws, {"op": 11})
            elif op == 2:
                self.identifies += 1
                self.ws = ws
                self.seq += 1
                ready = {"v": 10, "user": self.bot, "guilds": [{"id": str(self.guild_id), "unavailable": True}],
                         "session_id": self.session_id, "resume_gateway_url": self.gateway_url,
                         "application": {"id": str(self.app_id), "flags": 0}, "private_channels": [],
                         "relationships": [], "shard": [0, 1]}
                await self._send(ws, {"op": 0, "t": "READY", "s": self.seq, "d": ready})
                await self.dispatch("GUILD_CREATE", self._guild())
            elif op == 6:
                self.resumes += 1
                self.ws = ws
                since = d["seq"] - (1 if self.redeliver_on_resume else 0)
                for seq, t, ev in list(self.events):
                    if seq > since:
                        await self._send(ws, {"op": 0, "t": t, "s": seq, "d": ev})
                self.seq += 1
                await self._send(ws, {"op": 0, "t": "RESUMED", "s": self.seq, "d": {}})
            self._touch()
        if self.ws is ws:
            self.ws = None
        return ws

    # --- what tests send --------------------------------------------------------------------------

    async def slash(self, name: str, options: list[dict] | None = None, *, user_id: int = 42, user_name: str = "alice",
                    channel_id: int | None = None, roles: tuple[int, ...] = (), locale: str = "en-US",
                    dm: bool = False, app_permissions: int | None = None, kind: int = 2,
                    resolved: dict | None = None, modal: dict | None = None) -> Interaction:
        """Dispatch an INTERACTION_CREATE for ``/name`` (subcommands: a type-1 option), or with ``kind=5``
        the submission of a modal (``modal``: its custom_id and components as the user filled them in)."""
        iid, token = self.new_id(), f"tok{self.new_id()}"
        perms = app_permissions if app_permissions is not None else (
            ALL_PERMISSIONS if self.manage_webhooks else ALL_PERMISSIONS & ~MANAGE_WEBHOOKS)
        data: dict[str, Any] = modal or {"id": str(self.new_id()), "name": name, "type": 1, "options": options or []}
        if resolved:
            data["resolved"] = resolved
        payload: dict[str, Any] = {
            "id": str(iid), "application_id": str(self.app_id), "type": kind, "data": data, "token": token,
            "version": 1, "locale": locale, "app_permissions": str(perms), "entitlements": [],
            "authorizing_integration_owners": {"0": str(self.guild_id)}, "attachment_size_limit": 26214400,
        }
        if dm:
            cid = self.dm_channel_id(user_id)
            payload.update(channel_id=str(cid), user=self.user(user_id, user_name), context=1,
                           channel={"id": str(cid), "type": 1, "recipients": [self.user(user_id, user_name)]})
        else:
            cid = channel_id or self.channel_ids[0]
            payload.update(guild_id=str(self.guild_id), channel_id=str(cid), channel=self.channel(cid),
                           member=self.member(user_id, user_name, roles), guild_locale="en-US", context=0)
        inter = Interaction(iid, token, cid, payload, sent_at=time.monotonic())
        self.interactions[token] = inter
        await self.dispatch("INTERACTION_CREATE", payload)
        return inter

    async def post(self, content: str, *, user_id: int = 42, user_name: str = "alice", channel_id: int | None = None,
                   mention_bot: bool = False, reply_to: int | None = None, dm: bool = False,
                   roles: tuple[int, ...] = ()) -> dict:
        """A user's message arriving as MESSAGE_CREATE."""
        cid = self.dm_channel_id(user_id) if dm else (channel_id or self.channel_ids[0])
        if mention_bot:
            content = f"<@{self.app_id}> {content}"
        msg = self._message(cid, content, author=self.user(user_id, user_name))
        if mention_bot:
            msg["mentions"] = [self.bot]
        if reply_to is not None:
            ref = self.messages[reply_to]
            msg["message_reference"] = {"message_id": str(reply_to), "channel_id": ref["channel_id"],
                                        "guild_id": ref.get("guild_id")}
            msg["referenced_message"] = ref
            msg["type"] = 19
        if not dm:
            msg["member"] = {k: v for k, v in self.member(user_id, user_name, roles).items() if k != "user"}
        await self.dispatch("MESSAGE_CREATE", msg)
        return msg

    def add_file(self, name: str, data: bytes) -> dict:
        fid = self.new_id()
        self.files[fid] = (name, data)
        return {"id": str(fid), "filename": name, "size": len(data), "url": f"{self.base}/files/{fid}/{name}",
                "proxy_url": f"{self.base}/files/{fid}/{name}", "content_type": "application/octet-stream"}

    def inject(self, method: str, pattern: str, times: int = 1, retry_after: float = 0.3, status: int = 429,
               code: int = 0) -> None:
        """The next ``times`` requests matching answer ``status`` (429 with ``retry_after``; else with ``code``)."""
        self.injects.append(Inject(method, re.compile(pattern), times, retry_after, status, code))

    def delete(self, mid: int) -> None:
        """Someone deletes a message (a moderator, the user): later edits of it get 404 Unknown Message."""
        self.messages.pop(mid, None)
        self._touch()

    # --- what tests read --------------------------------------------------------------------------

    def original(self, inter: Interaction) -> dict | None:
        return self.messages.get(inter.original_id) if inter.original_id else None

    def reply_messages(self, inter: Interaction) -> list[dict]:
        ids = ([inter.original_id] if inter.original_id else []) + inter.followups
        return [self.messages[i] for i in ids if i in self.messages]

    def channel_messages(self, cid: int, *, bot_only: bool = True) -> list[dict]:
        out = [m for m in self.messages.values() if int(m["channel_id"]) == cid]
        if bot_only:
            out = [m for m in out if m["author"].get("bot")]
        return sorted(out, key=lambda m: int(m["id"]))

    # --- REST -------------------------------------------------------------------------------------

    async def _file(self, request: web.Request) -> web.Response:
        name, data = self.files[int(request.match_info["id"])]
        return web.Response(body=data, headers={"Content-Type": "application/octet-stream"})

    async def _body(self, request: web.Request) -> tuple[dict, list[tuple[str, bytes]]]:
        ctype = request.headers.get("Content-Type", "")
        if ctype.startswith("multipart/"):
            form = await request.post()
            payload = json.loads(form.get("payload_json") or "{}")
            files = []
            for key, value in form.items():
                if key.startswith("files[") or key == "file":
                    files.append((value.filename, value.file.read()))
            return payload, files
        raw = await request.read()
        return (json.loads(raw) if raw else {}), []

    def _limit(self, cid: int) -> tuple[bool, dict]:
        """Fixed windows per channel: (allowed, headers)."""
        if self.channel_limit is None:
            return True, {}
        count, window = self.channel_limit
        now = time.monotonic()
        start, used = self._windows.get(cid, (now, 0))
        if now - start >= window:
            start, used = now, 0
        reset_after = max(0.0, window - (now - start))
        if used >= count:
            return False, {"X-RateLimit-Limit": str(count), "X-RateLimit-Remaining": "0",
                           "X-RateLimit-Reset-After": f"{reset_after:.3f}", "X-RateLimit-Bucket": f"ch{cid}",
                           "Retry-After": f"{reset_after:.3f}"}
        used += 1
        self._windows[cid] = (start, used)
        return True, {"X-RateLimit-Limit": str(count), "X-RateLimit-Remaining": str(count - used),
                      "X-RateLimit-Reset-After": f"{reset_after:.3f}",
                      "X-RateLimit-Reset": f"{time.time() + reset_after:.3f}", "X-RateLimit-Bucket": f"ch{cid}"}

    def _too_many(self, retry_after: float, headers: dict | None = None) -> web.Response:
        self.count_429 += 1
        h = {"Via": "1.1 google", "Retry-After": f"{retry_after:.3f}", **(headers or {})}
        return jresp({"message": "You are being rate limited.", "retry_after": retry_after, "global": False},
                     429, h)

    async def _rest(self, request: web.Request) -> web.Response:
        path = "/" + request.match_info["tail"]
        method = request.method
        body, files = ({}, []) if method in ("GET", "DELETE") else await self._body(request)
        self.requests.append((method, path, body))
        for inj in self.injects:
            if inj.times > 0 and inj.method == method and inj.pattern.search(path):
                inj.times -= 1
                if inj.status == 429:
                    return self._too_many(inj.retry_after)
                return jresp({"message": "injected", "code": inj.code}, inj.status)
        try:
            resp = await self._route(method, path, body, files, request)
        finally:
            self._touch()
        return resp

    async def _route(self, method: str, path: str, body: dict, files, request) -> web.Response:
        m = re.fullmatch
        if method == "GET" and path == "/users/@me":
            return jresp(self.bot)
        if method == "GET" and path == "/oauth2/applications/@me":
            return jresp({"id": str(self.app_id), "name": "llmbot", "icon": None, "description": "",
                          "bot_public": True, "bot_require_code_grant": False, "verify_key": "00",
                          "owner": self.user(1, "owner"), "flags": 0, "team": None, "summary": "",
                          "rpc_origins": []})
        if r := m(r"/applications/(\d+)(?:/guilds/(\d+))?/commands", path):
            if method == "PUT":
                out = []
                for c in body:
                    out.append({**c, "id": str(self.new_id()), "application_id": str(self.app_id),
                                "version": "1", "type": c.get("type", 1), "default_member_permissions": None,
                                "dm_permission": True, "nsfw": False,
                                **({"guild_id": r.group(2)} if r.group(2) else {})})
                if not r.group(2):
                    self.commands = out
                return jresp(out)
            return jresp(self.commands)
        if r := m(r"/interactions/(\d+)/([^/]+)/callback", path):
            return self._callback(r.group(2), body, files)
        if r := m(r"/webhooks/(\d+)/([^/]+)(?:/messages/([^/]+))?", path):
            wid, token, mid = int(r.group(1)), r.group(2), r.group(3)
            if wid == self.app_id:
                return self._interaction_webhook(method, token, mid, body, files)
            return self._channel_webhook(method, wid, token, mid, body, files, request)
        if r := m(r"/webhooks/(\d+)", path):
            return self._edit_webhook(method, int(r.group(1)), body)
        if r := m(r"/channels/(\d+)/webhooks", path):
            return self._channel_webhooks(method, int(r.group(1)), body)
        if method == "GET" and (r := m(r"/channels/(\d+)", path)):
            cid = int(r.group(1))
            if cid in self.dm_channels:
                return jresp({"id": str(cid), "type": 1, "recipients": [self.user(cid - 1)]})
            return jresp(self.channel(cid))
        if r := m(r"/channels/(\d+)/typing", path):
            self.typing.append(int(r.group(1)))
            return web.Response(status=204)
        if r := m(r"/channels/(\d+)/messages(?:/(\d+))?", path):
            cid, mid = int(r.group(1)), r.group(2)
            if method in ("POST", "PATCH") and cid in self.forbidden_channels:
                return jresp({"message": "Missing Access", "code": 50001}, 403)
            if method == "PATCH" and int(mid) not in self.messages:
                return unknown_message()
            if method == "POST":
                ok, h = self._limit(cid)
                if not ok:
                    return self._too_many(float(h["Retry-After"]), h)
                msg = self._create(cid, body, files, author=self.bot)
                return jresp(msg, headers=h)
            if method == "PATCH":
                ok, h = self._limit(cid)
                if not ok:
                    return self._too_many(float(h["Retry-After"]), h)
                return jresp(self._edit(int(mid), body, files), headers=h)
            if method == "DELETE":
                self.messages.pop(int(mid), None)
                return web.Response(status=204)
            if mid is None:          # the channel's history: newest first, as Discord sends it
                after = int(request.query.get("after", 0))
                limit = min(int(request.query.get("limit", 50)), 100)
                found = [msg for msg in self.channel_messages(cid) if int(msg["id"]) > after]
                return jresp(sorted(found, key=lambda msg: int(msg["id"]), reverse=True)[:limit])
            return jresp(self.messages[int(mid)])
        if r := m(r"/users/@me/channels", path):
            rid = int(body["recipient_id"])
            return jresp({"id": str(self.dm_channel_id(rid)), "type": 1, "recipients": [self.user(rid)]})
        return jresp({"message": f"404: Not Found {method} {path}", "code": 0}, 404)

    # messages

    def _message(self, cid: int, content: str, *, author: dict, **extra) -> dict:
        mid = self.new_id()
        msg = {"id": str(mid), "channel_id": str(cid), "author": author, "content": content,
               "timestamp": _now_iso(), "edited_timestamp": None, "tts": False, "mention_everyone": False,
               "mentions": [], "mention_roles": [], "attachments": [], "embeds": [], "pinned": False,
               "type": 0, "flags": 0, "components": [], **extra}
        if cid not in self.dm_channels:
            msg["guild_id"] = str(self.guild_id)
        self.messages[mid] = msg
        self.history[mid] = [content]
        self.times[mid] = [time.monotonic()]
        self._touch()
        return msg

    def _attach(self, files) -> list[dict]:
        return [self.add_file(name, data) for name, data in files]

    def _resolve_embeds(self, embeds: list[dict], attachments: list[dict]) -> list[dict]:
        by_name = {a["filename"]: a["url"] for a in attachments}
        out = []
        for e in embeds or []:
            e = json.loads(json.dumps(e))
            for key in ("thumbnail", "image"):
                url = (e.get(key) or {}).get("url", "")
                if url.startswith("attachment://") and url[13:] in by_name:
                    e[key]["url"] = by_name[url[13:]]
                    e[key]["proxy_url"] = by_name[url[13:]]
            out.append(e)
        return out

    def _create(self, cid: int, body: dict, files, *, author: dict, **extra) -> dict:
        attachments = self._attach(files)
        msg = self._message(cid, body.get("content") or "", author=author, **extra)
        msg["attachments"] = attachments
        msg["embeds"] = self._resolve_embeds(body.get("embeds") or [], attachments)
        msg["flags"] = int(body.get("flags") or 0)
        if body.get("message_reference"):
            msg["message_reference"] = body["message_reference"]
        return msg

    def _edit(self, mid: int, body: dict, files) -> dict:
        msg = self.messages[mid]
        before = json.dumps([msg["content"], msg["embeds"]], sort_keys=True)
        new_files = self._attach(files)
        if "attachments" in body:
            keep = {str(a.get("id")) for a in body["attachments"] if isinstance(a, dict)}
            msg["attachments"] = [a for a in msg["attachments"] if a["id"] in keep] + new_files
        if "content" in body:
            msg["content"] = body["content"] or ""
        if "embeds" in body:
            msg["embeds"] = self._resolve_embeds(body["embeds"] or [], msg["attachments"])
        msg["edited_timestamp"] = _now_iso()
        if json.dumps([msg["content"], msg["embeds"]], sort_keys=True) == before:
            self.noop_edits += 1
        self.history[mid].append(msg["content"])
        self.times[mid].append(time.monotonic())
        return msg

    # interactions

    def _callback(self, token: str, body: dict, files) -> web.Response:
        inter = self.interactions.get(token)
        if inter is None:
            return jresp({"message": "Unknown interaction", "code": 10062}, 404)
        if inter.callback is not None:
            return jresp({"message": "Interaction has already been acknowledged.", "code": 40060}, 400)
        inter.callback = body
        kind, data = body["type"], body.get("data") or {}
        info: dict[str, Any] = {"id": str(inter.id), "type": inter.payload["type"]}
        resource: dict[str, Any] = {"type": kind}
        if kind == 8:
            inter.choices = data.get("choices", [])
        elif kind in (4, 5):
            msg = self._create(inter.channel_id, data, files, author=self.bot,
                               interaction_metadata={"id": str(inter.id), "type": 2,
                                                     "user": inter.payload.get("member", {}).get("user")
                                                     or inter.payload.get("user")})
            msg["flags"] = int(data.get("flags") or 0) | (128 if kind == 5 else 0)
            inter.original_id = int(msg["id"])
            info.update(response_message_id=msg["id"], response_message_loading=kind == 5,
                        response_message_ephemeral=bool(msg["flags"] & EPHEMERAL))
            resource["message"] = msg
        return jresp({"interaction": info, "resource": resource})

    def _interaction_webhook(self, method: str, token: str, mid: str | None, body: dict, files) -> web.Response:
        inter = self.interactions.get(token)
        if inter is None:
            return jresp({"message": "Unknown Webhook", "code": 10015}, 404)
        target = inter.original_id if mid == "@original" else (int(mid) if mid else None)
        if method == "POST":
            ok, h = self._limit(inter.channel_id)
            if not ok:
                return self._too_many(float(h["Retry-After"]), h)
            msg = self._create(inter.channel_id, body, files, author=self.bot, webhook_id=str(self.app_id))
            inter.followups.append(int(msg["id"]))
            return jresp(msg, headers=h)
        if target is None or target not in self.messages:
            return unknown_message()
        if method == "GET":
            return jresp(self.messages[target])
        if method == "DELETE":
            self.messages.pop(target)
            return web.Response(status=204)
        ok, h = self._limit(inter.channel_id)
        if not ok:
            return self._too_many(float(h["Retry-After"]), h)
        msg = self._edit(target, body, files)
        msg["flags"] = msg["flags"] & ~128
        return jresp(msg, headers=h)

    # channel webhooks

    def _hook_json(self, hook: dict) -> dict:
        return {k: v for k, v in hook.items() if k != "avatar_bytes"}

    def _channel_webhooks(self, method: str, cid: int, body: dict) -> web.Response:
        if not self.manage_webhooks:
            return jresp({"message": "Missing Permissions", "code": 50013}, 403)
        if method == "GET":
            return jresp([self._hook_json(h) for h in self.webhooks.values() if int(h["channel_id"]) == cid])
        wid = self.new_id()
        hook = {"id": str(wid), "type": 1, "guild_id": str(self.guild_id), "channel_id": str(cid),
                "name": body.get("name"), "avatar": self._store_avatar(body.get("avatar")), "token": f"wh{wid}",
                "application_id": str(self.app_id), "user": self.bot}
        self.webhooks[wid] = hook
        return jresp(self._hook_json(hook))

    def _store_avatar(self, data_uri: str | None) -> str | None:
        if not data_uri:
            return None
        raw = base64.b64decode(data_uri.split(",", 1)[1])
        digest = hashlib.md5(raw).hexdigest()
        self.avatars[digest] = raw
        return digest

    def _edit_webhook(self, method: str, wid: int, body: dict) -> web.Response:
        hook = self.webhooks.get(wid)
        if hook is None:
            return jresp({"message": "Unknown Webhook", "code": 10015}, 404)
        if method == "PATCH":
            if "name" in body:
                hook["name"] = body["name"]
            if "avatar" in body:
                hook["avatar"] = self._store_avatar(body["avatar"])
        return jresp(self._hook_json(hook))

    def _channel_webhook(self, method: str, wid: int, token: str, mid: str | None, body: dict, files,
                         request) -> web.Response:
        hook = self.webhooks.get(wid)
        if hook is None or hook["token"] != token:
            return jresp({"message": "Unknown Webhook", "code": 10015}, 404)
        cid = int(request.query.get("thread_id") or hook["channel_id"])
        ok, h = self._limit(cid)
        if not ok:
            return self._too_many(float(h["Retry-After"]), h)
        if method == "POST":
            author = {"id": str(wid), "username": body.get("username") or hook["name"], "discriminator": "0000",
                      "avatar": hook["avatar"], "bot": True}
            if body.get("avatar_url"):
                author["avatar_url"] = body["avatar_url"]
            msg = self._create(cid, body, files, author=author, webhook_id=str(wid))
            return jresp(msg, headers=h)
        if method == "PATCH":
            if int(mid) not in self.messages:
                return unknown_message()
            return jresp(self._edit(int(mid), body, files), headers=h)
        return jresp(self.messages[int(mid)])
