"""What the bot does with one update: commands, conversation turns in DMs and groups, the character picker."""
from __future__ import annotations

import logging
import re

from telegram import Bot, Chat, Message, MessageEntity, Update

from bot import i18n
from bot.i18n import describe, pick_lang
from bot.streaming import deliver
from bot.telegram.characters import Characters, name_from_callback
from bot.telegram.config import TelegramConfig
from bot.telegram.context import Replier, Where, display_name
from bot.journal import Entry
from bot.telegram.memory import MemoryCommands
from bot.telegram.pacing import Pacer
from bot.telegram.scenes import PREFIX as SCENE_PREFIX, SceneHandlers
from bot.telegram.sinks import ChatTransport, DraftSink, EditingSink, Typing
from bot.telegram.texts import TEXTS
from engine.api import EngineAPI
from engine.errors import EngineError, StoreUnavailable
from engine.types import Speaker, Turn

log = logging.getLogger(__name__)

STREAM_PREF = "stream"          # per chat: "edits" once the server refused drafts there
OFF_WORDS = {"off", "none", "clear", "끄기", "없음", "해제"}


def parse_command(message: Message, username: str) -> tuple[str, str] | None:
    """(command, argument text) if the message starts with a command for this bot, else None."""
    body = message.text if message.text is not None else message.caption
    entities = message.entities if message.text is not None else message.caption_entities
    if not body or not entities or entities[0].type != MessageEntity.BOT_COMMAND or entities[0].offset != 0:
        return None
    token = body[1:entities[0].length]
    command, _, target = token.partition("@")
    if target and target.casefold() != username.casefold():
        return None                       # /cmd@another_bot
    return command.casefold(), body[entities[0].length:].strip()


class Handlers:
    """What the bot does with one journaled update: commands, conversation turns, the character picker.

    Holds only the EngineAPI; the update's journal entry records what was already sent, so a resumed
    update continues rather than repeats.
    """

    def __init__(self, engine: EngineAPI, cfg: TelegramConfig, default_lang: str, bot: Bot, pacer: Pacer):
        self.engine, self.cfg, self.default_lang = engine, cfg, default_lang
        self.bot, self.pacer = bot, pacer
        self.perm = cfg.permissions
        self.replies: set = set()          # engine replies being streamed, for a clean shutdown
        self.characters = Characters(engine, self.perm.admin_user_ids)
        self.commands = {
            "start": self.cmd_start, "help": self.cmd_help, "chat": self.cmd_chat, "characters": self.cmd_characters,
            "character": self.cmd_character, "reset": self.cmd_reset, "stop": self.cmd_stop, "lang": self.cmd_lang,
            "import": self.cmd_import,
            **MemoryCommands(engine, self.characters).handlers(),
        }
        self.scenes = SceneHandlers(self)
        self.commands.update(self.scenes.commands)

    @property
    def username(self) -> str:
        return self.bot.username

    # entry point -------------------------------------------------------------------------------

    async def handle(self, update: Update, entry: Entry) -> str:
        """Handle one update; the outcome names what happened (for the journal and tests)."""
        if update.callback_query is not None:
            return await self.on_callback(update, entry)
        message = update.message
        if message is None or message.from_user is None or message.from_user.is_bot:
            return "ignored"
        command = parse_command(message, self.username)
        private = message.chat.type == Chat.PRIVATE
        # In a chat with a scene, everything said to the bot is said to the scene's characters.
        in_scene = command is None and message.text is not None and await self.scenes.here(message.chat.id)
        if command is None and not private and not in_scene and not self._addressed(message):
            return "ignored"
        if command is not None and command[0] not in self.commands:
            return "ignored" if not private else await self._reply_help(message, entry)
        where = await self._where(message.chat, message.from_user)
        out = Replier(self._transport(where), entry, where.lang)
        refusal = self._refusal(where)
        if refusal:
            await out.say(refusal)
            return "refused"
        if command is not None:
            name, args = command
            await self.commands[name](where, message, args, entry, out)
            return name
        text = self._strip_mention(message.text or "") if not private else (message.text or "")
        if message.text is None:
            if private:
                await out.say("text_only")
            return "ignored"
        if not text.strip():
            await out.say("help")
            return "help"
        if in_scene:
            await self.scenes.converse(where, message, text, entry)
            return "scene"
        await self.converse(where, message, text, entry, character=await self.characters.current(where))
        return "reply"

    async def _reply_help(self, message: Message, entry: Entry) -> str:
        where = await self._where(message.chat, message.from_user)
        await Replier(self._transport(where), entry, where.lang).say("help")
        return "help"

    async def on_callback(self, update: Update, entry: Entry) -> str:
        query = update.callback_query
        try:
            await query.answer()
        except Exception as e:  # noqa: BLE001 - the spinner on the button is cosmetic; the choice still counts
            log.debug("answerCallbackQuery failed: %s", e)
        chat = update.effective_chat
        if chat is None or query.data is None:
            return "ignored"
        where = await self._where(chat, query.from_user)
        out = Replier(self._transport(where), entry, where.lang)
        refusal = self._refusal(where)
        if refusal:
            await out.say(refusal)
            return "refused"
        if query.data.startswith(SCENE_PREFIX):
            return await self.scenes.on_button(where, query.data, out)
        name = name_from_callback(query.data, self.characters.names(where))
        if name is None:
            await out.say("unknown_character", name=query.data.removeprefix("ch:"))
            return "unknown_character"
        await self.characters.choose(where, name, out)
        return "character"

    async def apologize(self, update: Update, entry: Entry, error: Exception) -> None:
        """Tell the user their message could not be answered (best effort: Telegram may be the problem)."""
        chat, user = update.effective_chat, update.effective_user
        if chat is None or user is None:
            return
        try:
            where = await self._where(chat, user)
            message = describe(error, where.lang)
            await self.bot.send_message(chat.id, message)
        except Exception as e:  # noqa: BLE001 - nothing more can be done for this update
            log.info("could not tell chat %s about the failure: %s", chat.id, e)

    # who, where -------------------------------------------------------------------------------

    async def _where(self, chat: Chat, user) -> Where:
        speaker_id = f"telegram:{user.id}"
        try:
            chosen = await self.engine.language(speaker_id)
        except StoreUnavailable:
            chosen = None
        lang = pick_lang(chosen, user.language_code, default=self.default_lang)
        shared = chat.type != Chat.PRIVATE and chat.id in self.perm.shared_group_ids
        return Where(chat=chat, user=user, speaker=Speaker(speaker_id, display_name(user), lang), lang=lang,
                     scope=f"telegram:chat:{chat.id}", owner=f"telegram:group:{chat.id}" if shared else speaker_id,
                     shared=shared)

    def _refusal(self, where: Where) -> str | None:
        if where.user.id in self.perm.admin_user_ids:
            return None
        if self.perm.allowed_user_ids and where.user.id not in self.perm.allowed_user_ids:
            return "not_allowed"
        if not where.private and self.perm.allowed_chat_ids and where.chat.id not in self.perm.allowed_chat_ids:
            return "chat_not_allowed"
        return None

    def _addressed(self, message: Message) -> bool:
        """In a group: a mention of the bot, or a reply to one of its messages."""
        replied = message.reply_to_message
        if replied is not None and replied.from_user is not None and replied.from_user.id == self.bot.id:
            return True
        for entity, value in message.parse_entities([MessageEntity.MENTION, MessageEntity.TEXT_MENTION]).items():
            if entity.type == MessageEntity.MENTION and value[1:].casefold() == self.username.casefold():
                return True
            if entity.type == MessageEntity.TEXT_MENTION and entity.user and entity.user.id == self.bot.id:
                return True
        return False

    def _strip_mention(self, text: str) -> str:
        return re.sub(rf"@{re.escape(self.username)}\b", "", text, flags=re.IGNORECASE).strip()

    def _transport(self, where: Where, reply_to: int | None = None) -> ChatTransport:
        return ChatTransport(self.bot, self.pacer, where.chat.id, reply_to=reply_to)

    # conversation -----------------------------------------------------------------------------

    async def converse(self, where: Where, message: Message, text: str, entry: Entry, character: str | None) -> None:
        """One turn: the engine's reply streamed into the chat (drafts in DMs, edits elsewhere)."""
        conversation_id = None
        mode = "roleplay" if character else "chat"
        if where.shared:
            conversation_id = await self.engine.active_conversation(where.owner, where.scope, mode, character)
        turn = Turn(speaker=where.speaker, scope=where.scope, text=text, mode=mode, character=character,
                    conversation_id=conversation_id, request_key=entry.key)
        reply = self.engine.reply(turn)
        transport = self._transport(where, reply_to=None if where.private else message.message_id)
        typing = Typing(self.bot, where.chat.id, self.cfg.typing_interval_s)
        chat_key = f"telegram:chat:{where.chat.id}"
        drafts = where.private and await self.engine.preference(chat_key, STREAM_PREF) != "edits"
        if drafts:
            async def remember() -> None:
                await self.engine.set_preference(chat_key, STREAM_PREF, "edits")
            sink = DraftSink(transport, draft_id=entry_draft_id(entry), entry=entry, typing=typing,
                             on_unsupported=remember)
        else:
            sink = EditingSink(transport, entry, typing)
        interval = self.cfg.draft_interval_s if drafts else self.pacer.gap(where.chat.id)
        self.replies.add(reply)
        try:
            await deliver(reply, sink, interval=interval,
                          describe_error=lambda e: describe(e, where.lang) if isinstance(e, EngineError) else None)
        finally:
            self.replies.discard(reply)
            typing.stop()

    def interrupt(self) -> int:
        """Stop every reply in flight as /stop would: each ends with its text so far and a notice."""
        for reply in self.replies:
            reply.cancel("shutdown")
        return len(self.replies)

    # commands ---------------------------------------------------------------------------------

    async def cmd_start(self, where, message, args, entry, out) -> None:
        await out.say("start", name=where.speaker.name)

    async def cmd_help(self, where, message, args, entry, out) -> None:
        await out.say("help")

    async def cmd_chat(self, where, message, args, entry, out) -> None:
        if not args:
            return await out.say("chat_usage")
        await self.converse(where, message, args, entry, character=None)

    async def cmd_characters(self, where, message, args, entry, out) -> None:
        await self.characters.show_picker(where, out)

    async def cmd_character(self, where, message, args, entry, out) -> None:
        if not args:
            current = await self.characters.current(where)
            return await out.say("character_usage", current=current or i18n.text(TEXTS, "character_none", out.lang))
        if args.casefold() in OFF_WORDS:
            await self.engine.set_active_character(where.owner, where.scope, None)
            return await out.say("character_off")
        await self.characters.choose(where, args, out)

    async def cmd_reset(self, where, message, args, entry, out) -> None:
        await self.engine.reset(where.owner, where.scope)
        await out.say("reset")

    async def cmd_stop(self, where, message, args, entry, out) -> None:
        # A stopped reply says so itself ("Reply stopped."); only an idle /stop needs an answer.
        stopped = await self.engine.stop_replies_of(where.speaker.id) + self.engine.stop_scene_replies(where.scope)
        if not stopped:
            await out.say("nothing_to_stop")

    async def cmd_lang(self, where, message, args, entry, out) -> None:
        choice = args.strip().casefold()
        if choice not in i18n.languages():
            return await out.say("lang_usage")
        await self.engine.set_language(where.speaker.id, choice)
        out.lang = choice
        await out.say("lang_set")

    async def cmd_import(self, where, message, args, entry, out) -> None:
        await self.characters.import_card(where, message.document, out)


def entry_draft_id(entry: Entry) -> int:
    """One non-zero draft id per reply, the same when the reply is resumed (so the draft just continues)."""
    update_id = int(entry.local)
    return update_id % 2_000_000_000 + 1
