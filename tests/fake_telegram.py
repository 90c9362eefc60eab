"""A fake Telegram Bot API server on 127.0.0.1 (aiohttp) for driving the real python-telegram-bot client in tests.

It keeps what a test needs to look at: every call the bot made (method,
parameters, time), the text of every message as last edited, the updates it
handed out and when. Faults can be injected: a 429 with ``retry_after`` for
the next calls of a method, drafts unsupported (404, as an older server), a
per-chat message rate enforced with 429s (as Telegram's ~1 message/s per chat),
and the whole server going down and coming back on the same port.
"""
from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import web

# Parameters PTB sends as plain strings; everything else it JSON-encodes.
STRING_FIELDS = {"text", "caption", "action", "language_code", "callback_query_id", "file_id", "parse_mode", "url",
                 "secret_token", "emoji", "filename", "description", "short_description", "name"}
MESSAGE_METHODS = {"sendMessage", "editMessageText", "sendPhoto", "sendDocument"}
COMMAND_RE = re.compile(r"^/[A-Za-z0-9_]+(@[A-Za-z0-9_]+)?")
MENTION_RE = re.compile(r"@[A-Za-z0-9_]{3,}")


@dataclass
class Call:
    method: str
    params: dict[str, Any]
    t: float
    status: int = 200

    @property
    def chat_id(self) -> int | None:
        value = self.params.get("chat_id")
        return int(value) if value is not None else None

    @property
    def text(self) -> str | None:
        return self.params.get("text")


@dataclass
class Fault:
    status: int
    description: str
    retry_after: int | None = None


@dataclass
class FakeTelegram:
    token: str = "123456:TEST-TOKEN"
    bot_id: int = 777000
    username: str = "llm_test_bot"
    drafts_supported: bool = True
    per_chat_interval: float | None = None        # enforce at most one message per this many seconds per chat
    max_poll_wait: float = 1.0                    # longest getUpdates hold, whatever timeout the bot asks
    calls: list[Call] = field(default_factory=list)
    port: int = 0

    def __post_init__(self) -> None:
        self.updates: list[dict] = []
        self.handed_out: dict[int, float] = {}     # update_id -> when getUpdates first returned it
        self.confirmed = 0                         # the highest offset the bot confirmed
        self.texts: dict[tuple[int, int], str] = {}
        self.faults: dict[str, list[Fault]] = {}
        self.files: dict[str, bytes] = {}
        self.commands: dict[str, list[dict]] = {}
        self.webhook: dict | None = None
        self.rate_limited = 0                      # 429s answered because of per_chat_interval
        self._last_message: dict[int, float] = {}
        self._update_ids = itertools.count(1)
        self._message_ids: dict[int, itertools.count] = {}
        self._new_update = asyncio.Event()
        self._runner: web.AppRunner | None = None

    # life cycle -----------------------------------------------------------------------------

    async def start(self) -> "FakeTelegram":
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/bot{token}/{method}", self._api)
        app.router.add_get("/file/bot{token}/{path:.+}", self._file)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port)
        await site.start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        """Go down (a restart with ``start`` comes back on the same port)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/bot"

    @property
    def base_file_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/file/bot"

    # what the bot did ------------------------------------------------------------------------

    def calls_of(self, method: str, chat_id: int | None = None) -> list[Call]:
        return [c for c in self.calls if c.method == method and c.status == 200
                and (chat_id is None or c.chat_id == chat_id)]

    def sent_texts(self, chat_id: int) -> list[str]:
        """The final text of every message the bot sent to a chat, in order."""
        return [t for (c, _), t in sorted(self.texts.items()) if c == chat_id]

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 60.0, interval: float = 0.02) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            await asyncio.sleep(interval)
        raise AssertionError(f"condition not met within {timeout}s; calls: "
                             f"{[(c.method, c.chat_id, c.status) for c in self.calls[-30:]]}")

    def fail_next(self, method: str, times: int = 1, *, status: int = 429, retry_after: int | None = 1,
                  description: str | None = None) -> None:
        description = description or ("Too Many Requests: retry after %d" % retry_after if status == 429
                                      else "Bad Request")
        self.faults.setdefault(method, []).extend(Fault(status, description, retry_after) for _ in range(times))

    # updates from users -----------------------------------------------------------------------

    def _message_id(self, chat_id: int) -> int:
        return next(self._message_ids.setdefault(chat_id, itertools.count(1)))

    def user(self, user_id: int, first_name: str = "Tester", language_code: str | None = "en") -> dict:
        user = {"id": user_id, "is_bot": False, "first_name": first_name}
        if language_code:
            user["language_code"] = language_code
        return user

    def chat(self, chat_id: int, chat_type: str | None = None) -> dict:
        chat_type = chat_type or ("private" if chat_id > 0 else "supergroup")
        chat = {"id": chat_id, "type": chat_type}
        chat.update({"first_name": "Tester"} if chat_type == "private" else {"title": f"Group {chat_id}"})
        return chat

    def push(self, kind: str, payload: dict, *, queue: bool = True) -> int:
        """A new update; queued for getUpdates unless the test delivers it itself (webhook)."""
        update_id = next(self._update_ids)
        self.last_update = {"update_id": update_id, kind: payload}
        if queue:
            self.updates.append(self.last_update)
            self._new_update.set()
        return update_id

    def message_payload(self, chat_id: int, text: str | None, *, user_id: int | None = None, first_name: str = "Tester",
                        language_code: str | None = "en", reply_to: dict | None = None, caption: str | None = None,
                        document: dict | None = None) -> dict:
        user_id = user_id if user_id is not None else chat_id
        msg: dict[str, Any] = {"message_id": self._message_id(chat_id), "date": int(time.time()),
                               "chat": self.chat(chat_id), "from": self.user(user_id, first_name, language_code)}
        if text is not None:
            msg["text"] = text
            entities = _entities(text)
            if entities:
                msg["entities"] = entities
        if caption is not None:
            msg["caption"] = caption
            entities = _entities(caption)
            if entities:
                msg["caption_entities"] = entities
        if document is not None:
            msg["document"] = document
        if reply_to is not None:
            msg["reply_to_message"] = reply_to
        return msg

    def send_text(self, chat_id: int, text: str, *, queue: bool = True, **kw) -> int:
        """A user writes ``text`` in a chat (positive id: private, negative: a supergroup); the update id."""
        return self.push("message", self.message_payload(chat_id, text, **kw), queue=queue)

    def send_document(self, chat_id: int, data: bytes, file_name: str, caption: str | None, **kw) -> int:
        file_id = f"file{len(self.files) + 1}"
        self.files[file_id] = data
        document = {"file_id": file_id, "file_unique_id": f"u{file_id}", "file_name": file_name,
                    "file_size": len(data)}
        return self.push("message", self.message_payload(chat_id, None, caption=caption, document=document, **kw))

    def press_button(self, chat_id: int, data: str, *, user_id: int | None = None, message_id: int = 1,
                     language_code: str | None = "en") -> int:
        user_id = user_id if user_id is not None else chat_id
        message = {"message_id": message_id, "date": int(time.time()), "chat": self.chat(chat_id),
                   "from": self._bot_user(), "text": "…"}
        return self.push("callback_query", {"id": f"cb{len(self.updates)}", "from": self.user(user_id,
                         language_code=language_code), "chat_instance": "ci", "data": data, "message": message})

    def bot_message(self, chat_id: int, message_id: int) -> dict:
        """A message of the bot's, for a user to reply to."""
        return {"message_id": message_id, "date": int(time.time()), "chat": self.chat(chat_id),
                "from": self._bot_user(), "text": self.texts.get((chat_id, message_id), "…")}

    # the server -------------------------------------------------------------------------------

    def _bot_user(self) -> dict:
        return {"id": self.bot_id, "is_bot": True, "first_name": "LLM Test Bot", "username": self.username}

    async def _params(self, request: web.Request) -> dict[str, Any]:
        params: dict[str, Any] = dict(request.query)
        if request.can_read_body:
            form = await request.post()
            for key, value in form.items():
                if hasattr(value, "file"):            # an uploaded file (multipart)
                    params[key] = value.file.read()
                    params[key + "_name"] = value.filename
                else:
                    params[key] = value
        for key, value in list(params.items()):
            if isinstance(value, str) and key not in STRING_FIELDS:
                try:
                    params[key] = json.loads(value)
                except ValueError:
                    pass
        return params

    async def _api(self, request: web.Request) -> web.Response:
        if request.match_info["token"] != self.token:
            return _error(401, "Unauthorized")
        method = request.match_info["method"]
        params = await self._params(request)
        call = Call(method, params, time.monotonic())
        self.calls.append(call)
        faults = self.faults.get(method)
        if faults:
            fault = faults.pop(0)
            call.status = fault.status
            return _error(fault.status, fault.description, fault.retry_after)
        if method in MESSAGE_METHODS and self.per_chat_interval and call.chat_id is not None:
            last = self._last_message.get(call.chat_id)
            if last is not None and call.t - last < self.per_chat_interval:
                self.rate_limited += 1
                call.status = 429
                wait = max(1, round(self.per_chat_interval - (call.t - last)))
                return _error(429, f"Too Many Requests: retry after {wait}", wait)
            self._last_message[call.chat_id] = call.t
        handler = getattr(self, "_m_" + method, None)
        if handler is None:
            call.status = 404
            return _error(404, "Not Found")
        result = handler(params)
        if isinstance(result, web.Response):
            call.status = result.status
            return result
        if asyncio.iscoroutine(result):
            result = await result
        return web.json_response({"ok": True, "result": result})

    async def _file(self, request: web.Request) -> web.Response:
        file_id = request.match_info["path"].rsplit("/", 1)[-1]
        if request.match_info["token"] != self.token or file_id not in self.files:
            return web.Response(status=404)
        return web.Response(body=self.files[file_id], content_type="application/octet-stream")

    def _message(self, chat_id: int, **extra) -> dict:
        return {"message_id": self._message_id(chat_id), "date": int(time.time()), "chat": self.chat(chat_id),
                "from": self._bot_user(), **extra}

    # methods ------------------------------------------------------------------------------------

    def _m_getMe(self, p):
        return {**self._bot_user(), "can_join_groups": True, "can_read_all_group_messages": False,
                "supports_inline_queries": False}

    def _m_deleteWebhook(self, p):
        self.webhook = None
        return True

    def _m_setWebhook(self, p):
        self.webhook = {"url": p["url"], "secret_token": p.get("secret_token")}
        return True

    async def post_to_webhook(self, update: dict, secret: str | None = None) -> int:
        """Deliver one update the way Telegram does in webhook mode; the HTTP status the bot answered."""
        from aiohttp import ClientSession

        secret = secret if secret is not None else self.webhook.get("secret_token")
        headers = {"X-Telegram-Bot-Api-Secret-Token": secret} if secret else {}
        async with ClientSession() as session:
            async with session.post(self.webhook["url"], json=update, headers=headers) as response:
                return response.status

    def _m_setMyCommands(self, p):
        self.commands[p.get("language_code", "")] = p["commands"]
        return True

    async def _m_getUpdates(self, p):
        offset = int(p.get("offset") or 0)
        if offset:
            self.confirmed = max(self.confirmed, offset)
            self.updates = [u for u in self.updates if u["update_id"] >= offset]
        wait = min(float(p.get("timeout") or 0), self.max_poll_wait)
        deadline = time.monotonic() + wait
        while not self.updates and time.monotonic() < deadline:
            self._new_update.clear()
            try:
                await asyncio.wait_for(self._new_update.wait(), deadline - time.monotonic())
            except asyncio.TimeoutError:
                break
        out = list(self.updates[:100])
        now = time.monotonic()
        for u in out:
            self.handed_out.setdefault(u["update_id"], now)
        return out

    def _m_sendChatAction(self, p):
        return True

    def _m_answerCallbackQuery(self, p):
        return True

    def _m_sendMessageDraft(self, p):
        if not self.drafts_supported:
            return _error(404, "Not Found")
        if int(p["chat_id"]) < 0:
            return _error(400, "Bad Request: drafts are available in private chats only")
        if not p.get("draft_id"):
            return _error(400, "Bad Request: draft_id must be non-zero")
        if len(p.get("text") or "") > 4096:
            return _error(400, "Bad Request: text is too long")
        return True

    def _m_sendMessage(self, p):
        text = p.get("text") or ""
        if not text.strip():
            return _error(400, "Bad Request: message text is empty")
        if len(text) > 4096:
            return _error(400, "Bad Request: message is too long")
        chat_id = int(p["chat_id"])
        msg = self._message(chat_id, text=text)
        if "reply_markup" in p:
            msg["reply_markup"] = p["reply_markup"]
        self.texts[(chat_id, msg["message_id"])] = text
        return msg

    def _m_editMessageText(self, p):
        chat_id, message_id, text = int(p["chat_id"]), int(p["message_id"]), p.get("text") or ""
        if (chat_id, message_id) not in self.texts:
            return _error(400, "Bad Request: message to edit not found")
        if not text.strip():
            return _error(400, "Bad Request: message text is empty")
        if len(text) > 4096:
            return _error(400, "Bad Request: MESSAGE_TOO_LONG")
        if self.texts[(chat_id, message_id)] == text:
            return _error(400, "Bad Request: message is not modified: specified new message content and reply "
                               "markup are exactly the same as a current content and reply markup of the message")
        self.texts[(chat_id, message_id)] = text
        return {"message_id": message_id, "date": int(time.time()), "edit_date": int(time.time()),
                "chat": self.chat(chat_id), "from": self._bot_user(), "text": text}

    def _m_deleteMessage(self, p):
        return self.texts.pop((int(p["chat_id"]), int(p["message_id"])), None) is not None

    def _m_sendPhoto(self, p):
        photo = p.get("photo")
        if not isinstance(photo, bytes) or not photo:
            return _error(400, "Bad Request: there is no photo in the request")
        if len(p.get("caption") or "") > 1024:
            return _error(400, "Bad Request: message caption is too long")
        chat_id = int(p["chat_id"])
        sizes = [{"file_id": f"photo{len(self.calls)}", "file_unique_id": f"up{len(self.calls)}", "width": 256,
                  "height": 256, "file_size": len(photo)}]
        return self._message(chat_id, photo=sizes, caption=p.get("caption", ""))

    def _m_sendDocument(self, p):
        chat_id = int(p["chat_id"])
        return self._message(chat_id, document={"file_id": "d", "file_unique_id": "ud"}, caption=p.get("caption", ""))

    def _m_getFile(self, p):
        file_id = p["file_id"]
        if file_id not in self.files:
            return _error(400, "Bad Request: invalid file_id")
        return {"file_id": file_id, "file_unique_id": f"u{file_id}", "file_size": len(self.files[file_id]),
                "file_path": f"documents/{file_id}"}


def _entities(text: str) -> list[dict]:
    found = []
    m = COMMAND_RE.match(text)
    if m:
        found.append({"type": "bot_command", "offset": 0, "length": m.end()})
    for m in MENTION_RE.finditer(text):
        if m.start() == 0 or text[m.start() - 1] in " \n":
            found.append({"type": "mention", "offset": m.start(), "length": m.end() - m.start()})
    return found


def _error(status: int, description: str, retry_after: int | None = None) -> web.Response:
    body: dict[str, Any] = {"ok": False, "error_code": status, "description": description}
    if status == 429 and retry_after is not None:
        body["parameters"] = {"retry_after": retry_after}
    return web.json_response(body, status=status)
