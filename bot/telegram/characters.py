"""Characters on Telegram: the picker keyboard, showing a chosen card as a photo, and an admin's card import."""
from __future__ import annotations

import hashlib
import logging

from telegram import Document, InlineKeyboardButton, InlineKeyboardMarkup
from telegram.constants import InlineKeyboardButtonLimit, MessageLimit
from telegram.error import BadRequest

from bot.telegram.context import Replier, Where
from engine.cards import CardError
from engine.cards.image import placeholder
from engine.cards.macros import apply_macros
from engine.api import CharacterView, EngineAPI

log = logging.getLogger(__name__)

PREFIX = "ch:"
MAX_BUTTONS = 100               # Telegram's limit for one inline keyboard
CAPTION_LIMIT = MessageLimit.CAPTION_LENGTH          # 1024


def callback_data(name: str) -> str:
    """Button data naming a character; long names (callback data is at most 64 bytes) go by a hash."""
    data = PREFIX + name
    if len(data.encode("utf-8")) <= InlineKeyboardButtonLimit.MAX_CALLBACK_DATA:
        return data
    return PREFIX + "#" + hashlib.sha256(name.encode("utf-8")).hexdigest()[:32]


def name_from_callback(data: str, names: list[str]) -> str | None:
    if not data.startswith(PREFIX):
        return None
    return next((n for n in names if callback_data(n) == data), None)


def keyboard(names: list[str]) -> InlineKeyboardMarkup:
    if len(names) > MAX_BUTTONS:
        log.warning("%d characters; the Telegram picker shows the first %d", len(names), MAX_BUTTONS)
    return InlineKeyboardMarkup([[InlineKeyboardButton(n, callback_data=callback_data(n))] for n in names[:MAX_BUTTONS]])


def trim(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


class Characters:
    def __init__(self, engine: EngineAPI, admin_ids: tuple[int, ...]):
        self.engine = engine
        self.admin_ids = admin_ids

    @property
    def registry(self) -> CharacterView:
        return self.engine.characters()

    def names(self, where: Where) -> list[str]:
        return [n for n in self.registry.names() if self.registry.allowed(n, where.scope)]

    async def current(self, where: Where) -> str | None:
        """The character selected for this conversation, if it still exists."""
        name = await self.engine.active_character(where.owner, where.scope)
        if name and self.registry.character(name) is None:
            log.info("selected character %r of %s is gone; back to chat", name, where.owner)
            await self.engine.set_active_character(where.owner, where.scope, None)
            return None
        return name

    async def show_picker(self, where: Where, out: Replier) -> None:
        names = self.names(where)
        if not names:
            await out.say("no_characters")
        else:
            await out.say("pick_character", reply_markup=keyboard(names))

    async def choose(self, where: Where, name: str, out: Replier) -> None:
        """Select a character: its card image with the description, then its first message."""
        found = self.registry.character(name)
        if found is None:
            return await out.say("unknown_character", name=name)
        if not self.registry.allowed(found.name, where.scope):
            return await out.say("character_not_here", name=found.name)
        await self.engine.set_active_character(where.owner, where.scope, found.name)
        card, user = found.card, where.speaker.name
        await self.show_card(out, card, apply_macros(card.description, card.display_name, user).strip())
        greeting = found.greeting or card.first_mes
        if greeting.strip():
            await out.say_text(trim(apply_macros(greeting, card.display_name, user), MessageLimit.MAX_TEXT_LENGTH))

    async def show_card(self, out: Replier, card, caption: str) -> None:
        """The card's image as a photo (a file when Telegram refuses it as one), sent once per update."""
        caption = trim(caption or card.display_name, CAPTION_LIMIT)
        image = card.image or placeholder(card.name)
        bot, chat_id = out.transport.bot, out.transport.chat_id

        async def photo():
            try:
                return await bot.send_photo(chat_id, image, caption=caption, filename=f"{card.name}.png")
            except BadRequest as e:     # Telegram refuses some pictures as photos (size, ratio); a file always goes
                log.info("card image of %s refused as a photo (%s); sent as a file", card.name, e)
                return await bot.send_document(chat_id, image, caption=caption, filename=f"{card.name}.png")

        await out.once(photo)

    async def import_card(self, where: Where, document: Document | None, out: Replier) -> None:
        """An admin's /import: check the card file, store it, and offer it at once."""
        if where.user.id not in self.admin_ids:
            return await out.say("admin_only")
        if document is None:
            return await out.say("import_usage")
        limits = self.engine.card_limits()
        if document.file_size and document.file_size > limits.max_file_bytes:
            return await out.say("import_too_large", limit=limits.max_file_bytes)
        file = await document.get_file()
        data = bytes(await file.download_as_bytearray())
        try:
            character = await self.engine.import_card(data, by=where.speaker.id)
        except CardError as e:
            return await out.say("import_bad", code=e.code, message=e.message)
        await out.say("import_ok", name=character.name)
