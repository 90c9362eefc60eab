"""Who wrote, where, in which language and conversation: one incoming Telegram update made ready to answer."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from telegram import Chat, User

from bot.i18n import text
from bot.streaming import retrying
from bot.journal import Entry
from bot.telegram.sinks import ChatTransport
from bot.telegram.texts import TEXTS
from engine.types import Speaker


@dataclass
class Where:
    """The conversation an update belongs to.

    ``owner`` holds the conversation and its preferences: the user, or the
    group itself when bot.yaml lists the group as shared.
    """

    chat: Chat
    user: User
    speaker: Speaker
    lang: str
    scope: str
    owner: str
    shared: bool

    @property
    def private(self) -> bool:
        return self.chat.type == Chat.PRIVATE


class Replier:
    """Sends a handler's short answers; each is sent once even if the update is handled again after a crash."""

    def __init__(self, transport: ChatTransport, entry: Entry, lang: str):
        self.transport, self.entry, self.lang = transport, entry, lang
        self._count = 0

    async def once(self, send: Callable[[], Awaitable[Any]]) -> Any:
        """Make the handler's next Bot API call unless an earlier run of this update already made it."""
        self._count += 1
        if self._count <= int(self.entry.progress.get("said", 0)):
            return None
        result = await retrying(lambda: self.transport.call(send))
        await self.entry.save(said=self._count)
        return result

    async def say(self, key: str, reply_markup=None, **kw) -> None:
        await self.say_text(text(TEXTS, key, self.lang, **kw), reply_markup=reply_markup)

    async def say_text(self, body: str, reply_markup=None) -> None:
        bot, chat_id = self.transport.bot, self.transport.chat_id
        await self.once(lambda: bot.send_message(chat_id, body, reply_markup=reply_markup))


def display_name(user: User) -> str:
    return user.full_name or user.username or "User"
