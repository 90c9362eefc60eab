"""How a reply appears in a Telegram chat: native drafts in private chats, send-and-edit elsewhere.

Both are resumable: what was already sent is recorded in the update's
journal entry, so a reply resumed after a crash continues where it stopped.
Text is sent plain (no parse mode), so Telegram never rejects it for markup.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Awaitable, Callable

from telegram import Bot, MessageEntity, ReplyParameters
from telegram.constants import ChatAction, MessageLimit
from telegram.error import (BadRequest, EndPointNotFound, Forbidden, InvalidToken, NetworkError, RetryAfter,
                            TelegramError)

from bot.streaming import EditSink, MessageGone, PathClosed, RateLimited, retrying, split_text
from bot.journal import Entry
from bot.telegram.pacing import Pacer

log = logging.getLogger(__name__)

LIMIT = MessageLimit.MAX_TEXT_LENGTH          # 4096
EDIT_RETRY_S = 1.0                            # wait before repeating an edit the server failed (5xx)


def utf16_len(text: str) -> int:
    """Telegram counts entity offsets and lengths in UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def retry_seconds(e: RetryAfter) -> float:
    value = e._retry_after if hasattr(e, "_retry_after") else e.retry_after  # noqa: SLF001 - avoids a deprecation
    return value.total_seconds() if isinstance(value, dt.timedelta) else float(value)


class DraftsUnsupported(Exception):
    """The Bot API server refused sendMessageDraft (an older server, or drafts off for this chat)."""


class ChatTransport:
    """One chat's message primitives for EditSink, paced, with Telegram's errors made uniform.

    429 becomes ``RateLimited`` (EditSink waits and repeats the call); "message
    is not modified" counts as done; "message to edit not found" (deleted)
    becomes ``MessageGone`` (the page continues in a new message); 403 (the bot
    was blocked or removed) becomes ``PathClosed``. Each new message id is reported to
    ``on_sent`` so a resumed reply edits it instead of sending another.
    """

    limit = LIMIT

    def __init__(self, bot: Bot, pacer: Pacer, chat_id: int, *, reply_to: int | None = None,
                 on_sent: Callable[[int], Awaitable[None]] | None = None, name: str | None = None):
        self.bot, self.pacer, self.chat_id = bot, pacer, chat_id
        self.reply_to = reply_to
        self.on_sent = on_sent
        # A scene's character signs each of its messages: "Name: " with the name in bold (an entity,
        # so the text itself stays plain and can never be refused for markup).
        self.head = f"{name}: " if name else ""
        self.entities = [MessageEntity(MessageEntity.BOLD, 0, utf16_len(name))] if name else None
        self.limit = LIMIT - len(self.head)

    async def call(self, fn):
        """Run one message-producing Bot API call for this chat, paced; a 429 becomes RateLimited."""
        await self.pacer.wait(self.chat_id)
        try:
            return await fn()
        except RetryAfter as e:
            seconds = retry_seconds(e)
            self.pacer.delay(self.chat_id, seconds)
            raise RateLimited(seconds) from None
        except Forbidden as e:
            raise PathClosed(f"403 {e}") from e

    async def send(self, text: str) -> int:
        reply = ReplyParameters(self.reply_to, allow_sending_without_reply=True) if self.reply_to else None
        message = await self.call(lambda: self.bot.send_message(self.chat_id, self.head + text, entities=self.entities,
                                                                reply_parameters=reply))
        self.reply_to = None                  # later pages follow the first one
        if self.on_sent:
            await self.on_sent(message.message_id)
        return message.message_id

    async def edit(self, handle: int, text: str) -> None:
        try:
            await self.call(lambda: self.bot.edit_message_text(self.head + text, chat_id=self.chat_id, message_id=handle,
                                                               entities=self.entities))
        except BadRequest as e:
            said = str(e).lower()
            if "to edit not found" in said:
                raise MessageGone(str(e)) from e
            if "not modified" not in said:
                raise
        except NetworkError as e:
            # A 5xx or a dropped connection: an edit is safe to repeat, so it is retried in place
            # (a send is not: it may have arrived, and is left to the update's own retry and resume).
            log.info("edit in %s failed (%s); trying again", self.chat_id, e)
            raise RateLimited(EDIT_RETRY_S) from e

    async def delete(self, handle: int) -> None:
        try:
            await self.bot.delete_message(self.chat_id, handle)
        except TelegramError as e:
            log.info("could not delete message %s in %s: %s", handle, self.chat_id, e)

    async def draft(self, draft_id: int, text: str) -> None:
        try:
            await self.bot.send_message_draft(self.chat_id, draft_id, text)
        except RetryAfter as e:
            raise RateLimited(retry_seconds(e)) from None
        except (BadRequest, InvalidToken, EndPointNotFound) as e:    # 400 / 404
            raise DraftsUnsupported(str(e)) from e


class Typing:
    """Shows "typing…" in a chat until stopped (while the reply waits in the queue)."""

    def __init__(self, bot: Bot, chat_id: int, interval: float):
        self.bot, self.chat_id, self.interval = bot, chat_id, interval
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop())

    def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    async def _loop(self) -> None:
        while True:
            try:
                await self.bot.send_chat_action(self.chat_id, ChatAction.TYPING)
            except TelegramError as e:      # cosmetic: never worth failing a reply over
                log.debug("typing action failed in %s: %s", self.chat_id, e)
            await asyncio.sleep(self.interval)


class EditingSink(EditSink):
    """EditSink that shows typing until the first text and takes over messages a crashed run left behind."""

    def __init__(self, transport: ChatTransport, entry: Entry, typing: Typing):
        super().__init__(transport)
        self.typing = typing
        self.entry = entry
        # A resumed reply edits its earlier (partial) messages; their text is unknown, so each gets one edit.
        self.handles = list(entry.progress.get("message_ids", []))
        self.shown = [None] * len(self.handles)
        transport.on_sent = self._sent

    async def _sent(self, message_id: int) -> None:
        await self.entry.save(message_ids=[*self.entry.progress.get("message_ids", []), message_id])

    async def open(self) -> None:
        self.typing.start()

    async def update(self, text: str) -> None:
        self.typing.stop()
        await super().update(text)

    async def finish(self, text: str) -> None:
        self.typing.stop()
        await super().finish(text)
        # A resumed reply may be shorter than the partial one it replaced.
        needed = len(self._pages(text[self.base:]))
        for handle in self.handles[needed:]:
            await self.transport.delete(handle)
        del self.handles[needed:], self.shown[needed:]

    async def fail(self, message: str) -> None:
        self.typing.stop()
        await super().fail(message)


class DraftSink:
    """Private chats: the reply grows in a native draft, then is sent with sendMessage (split past 4096).

    Nothing permanent is sent while writing, so a crash mid-reply leaves no
    half answer behind. If the server refuses drafts, ``on_unsupported`` is
    told (to remember it for the chat) and the reply continues by edits.
    """

    def __init__(self, transport: ChatTransport, draft_id: int, entry: Entry, typing: Typing,
                 on_unsupported: Callable[[], Awaitable[None]]):
        self.transport = transport
        self.draft_id = draft_id
        self.entry = entry
        self.typing = typing
        self.on_unsupported = on_unsupported
        self.fallback: EditingSink | None = None
        self._drafted = ""

    async def open(self) -> None:
        self.typing.start()

    async def update(self, text: str) -> None:
        self.typing.stop()
        if self.fallback:
            return await self.fallback.update(text)
        page = split_text(text, LIMIT)[-1]     # the page being written; earlier pages wait for the end
        if not page.strip() or page == self._drafted:
            return
        try:
            await self.transport.draft(self.draft_id, page)
        except RateLimited as e:
            log.info("draft in %s rate limited for %.1fs; the next update carries the text", self.transport.chat_id,
                     e.retry_after)
            return
        except DraftsUnsupported as e:
            log.info("drafts refused in chat %s (%s); streaming by edits", self.transport.chat_id, e)
            await self.on_unsupported()
            self.fallback = EditingSink(self.transport, self.entry, self.typing)
            return await self.fallback.update(text)
        self._drafted = page

    async def finish(self, text: str) -> None:
        self.typing.stop()
        if self.fallback:
            return await self.fallback.finish(text)
        sent = int(self.entry.progress.get("sent_chars", 0))   # what a crashed run already delivered
        for page in split_text(text[sent:], LIMIT):
            if page.strip():             # Telegram refuses a blank message; blank space has nothing to lose
                await retrying(lambda p=page: self.transport.send(p))
            sent += len(page)
            await self.entry.save(sent_chars=sent)

    async def fail(self, message: str) -> None:
        self.typing.stop()
        if self.fallback:
            return await self.fallback.fail(message)
        await retrying(lambda: self.transport.send(message))
