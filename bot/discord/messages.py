"""Plain messages: mentions of the bot, DMs, and replies to the bot's (or a character's) messages."""
from __future__ import annotations

import collections
import logging
import re

import discord

from bot.discord.access import Access, who
from bot.discord.conversation import Conversations, link_key, place_of
from bot.discord.texts import TEXTS
from bot.i18n import describe, text
from engine.api import EngineAPI
from engine.errors import EngineError, StoreUnavailable

log = logging.getLogger(__name__)


class Seen:
    """The last ``size`` event ids: a gateway that delivers an event twice (resume replay) gets one answer."""

    def __init__(self, size: int = 2048):
        self.size = size
        self._ids: collections.OrderedDict[int, None] = collections.OrderedDict()

    def first_time(self, event_id: int) -> bool:
        if event_id in self._ids:
            return False
        self._ids[event_id] = None
        if len(self._ids) > self.size:
            self._ids.popitem(last=False)
        return True


class Messages:
    def __init__(self, client: discord.Client, engine: EngineAPI, conversations: Conversations, access: Access,
                 allow_dms: bool):
        self.client = client
        self.engine = engine
        self.conv = conversations
        self.access = access
        self.allow_dms = allow_dms

    def _strip_mention(self, content: str) -> str:
        me = self.client.user
        return re.sub(rf"<@!?{me.id}>", "", content).strip() if me else content.strip()

    async def _linked(self, message: discord.Message) -> str | None:
        ref = message.reference
        if ref is None or ref.message_id is None:
            return None
        try:
            return await self.engine.linked_conversation(link_key(ref.message_id))
        except StoreUnavailable:
            return None

    async def on_message(self, message: discord.Message) -> None:
        me = self.client.user
        if me is None or message.author.bot or message.webhook_id is not None or message.author.id == me.id:
            return
        dm = message.guild is None
        mentioned = any(u.id == me.id for u in message.mentions)
        if not (dm or mentioned or message.reference):
            return
        linked = await self._linked(message)
        if not (dm or mentioned or linked):
            return
        lang = await self.conv.lang(message.author)
        try:
            if dm and not self.allow_dms:
                await message.reply(text(TEXTS, "dms_off", lang), mention_author=False)
                return
            if not self.access.allowed(who(message.author, message.channel)):
                await message.reply(text(TEXTS, "denied", lang), mention_author=False, delete_after=30)
                return
            content = self._strip_mention(message.content)
            if not content:
                await message.reply(text(TEXTS, "empty_message", lang), mention_author=False, delete_after=30)
                return
            mode, character = "chat", None
            if linked:
                conv = await self.engine.conversation(linked)
                if conv:
                    mode, character = conv.get("mode", "chat"), conv.get("character") or None
            else:
                character = await self.conv.active_character(message.author, place_of(message.channel, message.author))
                mode = "roleplay" if character else "chat"
            await self.conv.reply_to_message(message, content, lang=lang, conversation_id=linked, mode=mode,
                                             character=character if mode == "roleplay" else None)
        except EngineError as e:       # e.g. the database went away before the reply started
            log.info("message %s: %s", message.id, e)
            try:
                await message.reply(describe(e, lang), mention_author=False)
            except discord.HTTPException:
                pass
