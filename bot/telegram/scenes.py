"""Scenes on Telegram: /scene, /scene_add, /scene_remove, /scene_auto, /scene_end, the picker, and scene turns."""
from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message
from telegram.constants import InlineKeyboardButtonLimit, MessageLimit

from bot.i18n import describe, text
from bot.scene_texts import SCENE_TEXTS
from bot.streaming import EditSink, deliver
from bot.telegram.characters import MAX_BUTTONS, trim
from bot.telegram.context import Replier, Where
from bot.journal import Entry
from bot.telegram.sinks import ChatTransport, Typing
from engine.errors import EngineError, StoreUnavailable
from engine.scenes import parse_names
from engine.scenes.prompt import Line
from engine.types import Turn

if TYPE_CHECKING:
    from bot.telegram.handlers import Handlers

log = logging.getLogger(__name__)

PREFIX = "sc:"
START = "/scene"
USAGE = "/scene Wren Mina"


def button_data(name: str) -> str:
    """Button data toggling a character in the scene (hashed past Telegram's 64 bytes)."""
    data = PREFIX + name
    if len(data.encode("utf-8")) <= InlineKeyboardButtonLimit.MAX_CALLBACK_DATA:
        return data
    return PREFIX + "#" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:32]


class SceneHandlers:
    """The scene commands and turns of the Telegram surface (one per Handlers)."""

    def __init__(self, handlers: "Handlers"):
        self.h = handlers
        self.engine = handlers.engine
        self.commands = {"scene": self.cmd_scene, "scene_add": self.cmd_add, "scene_remove": self.cmd_remove,
                         "scene_auto": self.cmd_auto, "scene_end": self.cmd_end}

    @staticmethod
    def scope(chat_id: int) -> str:
        return f"telegram:chat:{chat_id}"

    async def here(self, chat_id: int) -> bool:
        """Does this chat have a scene (then every message to the bot goes to it)?"""
        try:
            return await self.engine.scene(self.scope(chat_id)) is not None
        except StoreUnavailable:
            return False

    def _say(self, out: Replier, key: str, reply_markup=None, **kw):
        return out.say_text(text(SCENE_TEXTS, key, out.lang, **kw), reply_markup=reply_markup)

    async def _guarded(self, out: Replier, action) -> None:
        """Run a scene command; an engine refusal (unknown name, full scene, no scene) is told in the user's language."""
        try:
            await action()
        except EngineError as e:
            await out.say_text(describe(e, out.lang))

    async def _introduce(self, where: Where, out: Replier, lines: list[Line]) -> None:
        """Each character that joins: its card photo once, then its greeting, signed with its name."""
        for line in lines:
            card = self.engine.characters().get(line.speaker)
            if card is not None:
                await self.h.characters.show_card(out, card, line.speaker)
            if line.content.strip():
                body = trim(line.content, MessageLimit.MAX_TEXT_LENGTH - len(line.speaker) - 2)
                transport = ChatTransport(self.h.bot, self.h.pacer, where.chat.id, name=line.speaker)
                await out.once(lambda b=body, t=transport: t.bot.send_message(t.chat_id, t.head + b,
                                                                             entities=t.entities))

    def _keyboard(self, where: Where, present: list[str]) -> InlineKeyboardMarkup:
        names = self.h.characters.names(where)[:MAX_BUTTONS]
        return InlineKeyboardMarkup([[InlineKeyboardButton(("✅ " if n in present else "") + n,
                                                           callback_data=button_data(n))] for n in names])

    # commands ----------------------------------------------------------------------------------

    async def cmd_scene(self, where: Where, message, args: str, entry: Entry, out: Replier) -> None:
        if not args:
            scene = await self.engine.scene(where.scope)
            present = scene.characters if scene else []
            if scene is not None:
                await self._say(out, "scene_present", names=", ".join(present) or "—", auto=scene.auto_turns)
            return await self._say(out, "scene_pick", reply_markup=self._keyboard(where, present))
        names, unknown = parse_names(args, self.engine.characters().names())
        if unknown:
            return await self._say(out, "scene_unknown", names=", ".join(unknown))

        async def start():
            scene, greetings = await self.engine.start_scene(where.scope, names, where.speaker)
            await self._say(out, "scene_started", names=", ".join(scene.characters))
            await self._introduce(where, out, greetings)
        await self._guarded(out, start)

    async def cmd_add(self, where: Where, message, args: str, entry: Entry, out: Replier) -> None:
        if not args:
            return await self._say(out, "scene_usage", usage="/scene_add Wren")

        async def add():
            scene, greeting = await self.engine.add_to_scene(where.scope, args, where.speaker)
            if greeting is None:
                return await self._say(out, "scene_already", name=args)
            await self._say(out, "scene_added", name=greeting.speaker)
            await self._introduce(where, out, [greeting])
        await self._guarded(out, add)

    async def cmd_remove(self, where: Where, message, args: str, entry: Entry, out: Replier) -> None:
        if not args:
            return await self._say(out, "scene_usage", usage="/scene_remove Wren")

        async def remove():
            await self.engine.remove_from_scene(where.scope, args)
            await self._say(out, "scene_removed", name=args)
        await self._guarded(out, remove)

    async def cmd_auto(self, where: Where, message, args: str, entry: Entry, out: Replier) -> None:
        if not args.strip().isdigit():
            return await self._say(out, "scene_usage", usage="/scene_auto 2")

        async def auto():
            scene = await self.engine.set_scene_auto(where.scope, int(args))
            await self._say(out, "scene_auto" if scene.auto_turns else "scene_auto_off", turns=scene.auto_turns)
        await self._guarded(out, auto)

    async def cmd_end(self, where: Where, message, args: str, entry: Entry, out: Replier) -> None:
        ended = await self.engine.end_scene(where.scope)
        await self._say(out, "scene_ended" if ended else "scene_none", start=START)

    async def on_button(self, where: Where, data: str, out: Replier) -> str:
        """A picker button: the character joins the scene (starting one if there is none), or leaves it."""
        name = next((n for n in self.h.characters.names(where) if button_data(n) == data), None)
        if name is None:
            await out.say("unknown_character", name=data.removeprefix(PREFIX))
            return "unknown_character"

        async def toggle():
            scene = await self.engine.scene(where.scope)
            if scene is None:
                scene, greetings = await self.engine.start_scene(where.scope, [name], where.speaker)
                await self._say(out, "scene_started", names=name)
                await self._introduce(where, out, greetings)
            elif scene.has(name):
                await self.engine.remove_from_scene(where.scope, name)
                await self._say(out, "scene_removed", name=name)
            else:
                _, greeting = await self.engine.add_to_scene(where.scope, name, where.speaker)
                await self._say(out, "scene_added", name=name)
                await self._introduce(where, out, [greeting] if greeting else [])
        await self._guarded(out, toggle)
        return "scene"

    # a message in a scene chat -----------------------------------------------------------------

    async def converse(self, where: Where, message: Message, body: str, entry: Entry) -> None:
        """The characters' answers, one message each, signed with the speaker's name."""
        turn = Turn(speaker=where.speaker, scope=where.scope, text=body, request_key=entry.key)
        reply_to = None if where.private else message.message_id
        try:
            async for speech in self.engine.scene_turn(turn):
                transport = ChatTransport(self.h.bot, self.h.pacer, where.chat.id, reply_to=reply_to,
                                          name=speech.character)
                reply_to = None
                typing = Typing(self.h.bot, where.chat.id, self.h.cfg.typing_interval_s)
                typing.start()
                self.h.replies.add(speech)
                try:
                    await deliver(self._until_first(speech, typing), EditSink(transport),
                                  interval=self.h.pacer.gap(where.chat.id),
                                  describe_error=lambda e: describe(e, where.lang) if isinstance(e, EngineError)
                                  else None)
                finally:
                    self.h.replies.discard(speech)
                    typing.stop()
        except EngineError as e:
            await self.h.bot.send_message(where.chat.id, describe(e, where.lang))

    @staticmethod
    async def _until_first(pieces, typing: Typing):
        async for piece in pieces:
            typing.stop()
            yield piece
