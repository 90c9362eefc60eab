"""One Discord turn: where it lives, who speaks, which character; the engine's reply streamed into Discord."""
from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

import discord

from bot.discord.config import DiscordConfig
from bot.discord.personas import Persona, Personas
from bot.discord.texts import TEXTS
from bot.discord.transports import (ChannelPacer, CharacterEmbed, ChannelTransport, Counters, DirectTransport, Handle,
                                    InteractionTransport, Plain, WebhookTransport)
from bot.journal import Entry, Journal
from bot.i18n import describe, pick_lang, text
from bot.streaming import EditSink, Undeliverable, deliver
from engine.api import EngineAPI
from engine.errors import EngineError, StoreUnavailable
from engine.types import Speaker, Turn

log = logging.getLogger(__name__)

# Engine errors a user gets privately (they concern only them), not as a public reply.
PRIVATE_ERRORS = frozenset({"user_busy", "rate_limited", "input_too_long", "unknown_character"})
ORPHAN_SEARCH = 50   # messages after the asked one searched for a reply a crash left unjournaled


@dataclass(frozen=True)
class Place:
    """Where a conversation lives: its scope name, and the scopes a character's ``channels`` may name."""

    scope: str
    scopes: tuple[str, ...]
    channel_id: int
    dm: bool


def place_of(channel: Any, user: Any) -> Place:
    if isinstance(channel, (discord.DMChannel, discord.GroupChannel)) or getattr(channel, "guild", None) is None:
        scope = f"discord:dm:{user.id}"
        return Place(scope, (scope,), channel.id, True)
    guild = f"discord:guild:{channel.guild.id}"
    if isinstance(channel, discord.Thread):
        scope = f"discord:thread:{channel.id}"
        return Place(scope, (scope, f"discord:channel:{channel.parent_id}", guild), channel.id, False)
    scope = f"discord:channel:{channel.id}"
    return Place(scope, (scope, guild), channel.id, False)


def speaker_of(user: Any, lang: str | None = None) -> Speaker:
    return Speaker(id=f"discord:{user.id}", name=getattr(user, "display_name", None) or user.name, lang=lang)


def link_key(message_id: int) -> str:
    return f"discord:msg:{message_id}"


# Which transport can edit a journaled message of each kind (a resumed reply continues on it).
GROUPS = {"webhook": WebhookTransport, "original": InteractionTransport, "followup": InteractionTransport,
          "channel": ChannelTransport}


def journal_payload(kind: str, turn: Turn, place: Place, lang: str, may_hook: bool, **extra: Any) -> dict:
    """What a restarted bot needs to complete this reply (the turn, where it goes, how it may be shown)."""
    return {"kind": kind, "lang": lang, "may_hook": may_hook, "place": dataclasses.asdict(place),
            "turn": {"speaker": dataclasses.asdict(turn.speaker), "scope": turn.scope, "text": turn.text,
                     "mode": turn.mode, "character": turn.character, "conversation_id": turn.conversation_id,
                     "request_key": turn.request_key}, **extra}


def turn_of(saved: dict) -> Turn:
    return Turn(**{**saved, "speaker": Speaker(**saved["speaker"])})


class ResumedInteraction:
    """What InteractionTransport uses of an interaction, rebuilt from its token after a restart."""

    def __init__(self, client: Any, token: str, channel: Any):
        self.followup = discord.Webhook.partial(client.application_id, token, client=client)
        self.channel = channel

    async def edit_original_response(self, **kw: Any) -> Any:
        return await self.followup.edit_message("@original", **kw)

    async def delete_original_response(self) -> None:
        await self.followup.delete_message("@original")


class _Sink(EditSink):
    """EditSink that answers errors meant for the user alone privately when it can."""

    def __init__(self, transport, fallbacks=(), private=None):
        super().__init__(transport, fallbacks=fallbacks)
        self.private = private          # async fn(message) -> bool: sent privately instead
        self.error: Exception | None = None

    async def fail(self, message: str) -> None:
        code = getattr(self.error, "code", None)
        if not self.handles and code in PRIVATE_ERRORS and self.private is not None and await self.private(message):
            return
        await super().fail(message)


class Conversations:
    """Runs turns for the command and message handlers (one instance per adapter)."""

    def __init__(self, engine: EngineAPI, cfg: DiscordConfig, default_lang: str, personas: Personas,
                 counters: Counters, client: Any = None, journal: Journal | None = None):
        self.engine = engine
        self.client = client
        self.journal = journal or Journal(engine, "discord:unknown", cfg.max_attempts)
        self.cfg = cfg
        self.default_lang = default_lang
        self.personas = personas
        self.counters = counters
        self.pacer = ChannelPacer(cfg.channel_edits, cfg.channel_edit_window_s, counters)
        self.replies_done = 0
        self._langs: dict[int, str | None] = {}      # /lang choices seen, for answers that cannot wait on the store

    # --- user settings -----------------------------------------------------------------------------

    def cached_lang(self, user_id: int) -> str | None:
        return self._langs.get(user_id)

    def _remember_lang(self, user_id: int, lang: str | None) -> None:
        if len(self._langs) > 10_000:
            self._langs.clear()
        self._langs[user_id] = lang

    async def lang(self, user: Any, *locales: Any) -> str:
        """The user's /lang choice, else their Discord locale, else the bot's default."""
        try:
            chosen = await self.engine.language(speaker_of(user).id)
            self._remember_lang(user.id, chosen)
        except StoreUnavailable:
            chosen = self._langs.get(user.id)
        return pick_lang(chosen, *(str(l) if l else None for l in locales), default=self.default_lang)

    async def set_lang(self, user: Any, lang: str) -> None:
        await self.engine.set_language(speaker_of(user).id, lang)
        self._remember_lang(user.id, lang)

    async def active_character(self, user: Any, place: Place) -> str | None:
        try:
            name = await self.engine.active_character(speaker_of(user).id, place.scope)
        except StoreUnavailable:
            return None
        chars = self.engine.characters()
        if name and chars.get(name) is not None and chars.allowed(name, place.scopes):
            return name
        return None

    async def conversation_here(self, user: Any, channel: Any) -> str:
        """The conversation the user continues here: with their active character, else with the assistant."""
        place = place_of(channel, user)
        character = await self.active_character(user, place)
        return await self.engine.conversation_for(Turn(speaker=speaker_of(user), scope=place.scope, text="",
                                                       mode="roleplay" if character else "chat", character=character))

    def persona(self, name: str) -> Persona:
        card = self.engine.characters().get(name)
        return Persona(card.display_name if card else name, card.image if card else None)

    # --- replies -------------------------------------------------------------------------------------

    async def _look_and_hook(self, channel: Any, character: str | None, may_hook: bool):
        """Plain text for the chat model; for a character, an embed carrying it and, where allowed, a webhook."""
        if character is None:
            return Plain(), None
        persona = self.persona(character)
        hook = await self.personas.webhook_for(channel) if may_hook else None
        return CharacterEmbed(persona.name, persona.image), hook

    def _webhook_transport(self, place: Place, channel: Any, hook, persona: Persona, link) -> WebhookTransport:
        thread = channel if isinstance(channel, discord.Thread) else None
        home = channel.parent_id if thread is not None else channel.id
        return WebhookTransport(place.channel_id, self.pacer, self.counters, Plain(), link, webhook=hook,
                                thread=thread, wear=lambda: self.personas.wear(hook, persona),
                                on_closed=lambda: self.personas.forget(home))

    def _direct(self, place: Place, user: Any, look: Any, link) -> list:
        """The user's DMs as the last way, unless the conversation is already there (or the user is unknown)."""
        return [] if place.dm or user is None else [DirectTransport(place.channel_id, self.pacer, self.counters, look, link,
                                                    user=user)]

    async def reply_to_interaction(self, interaction: discord.Interaction, message: str, *,
                                   character: str | None, lang: str) -> str:
        """The interaction is already deferred; stream the reply into its response (or a webhook)."""
        place = place_of(interaction.channel, interaction.user)
        turn = Turn(speaker=speaker_of(interaction.user, lang), scope=place.scope, text=message,
                    mode="roleplay" if character else "chat", character=character,
                    request_key=f"discord:interaction:{interaction.id}")
        may_hook = bool(interaction.app_permissions.manage_webhooks) and not place.dm
        created = interaction.created_at.timestamp()
        entry = await self.journal.record(f"i{interaction.id}", journal_payload(
            "interaction", turn, place, lang, may_hook, token=interaction.token, created_at=created))
        if entry is None:                 # answered already (a redelivered event)
            return ""
        if character is not None and may_hook:
            # The command's own response quotes what the user said; the character answers below it.
            quoted = "> " + "\n> ".join(message[:1900].splitlines() or [""])
            await interaction.edit_original_response(content=quoted)
        return await self._interaction_reply(turn, place, interaction, interaction.channel, interaction.user,
                                             created, may_hook, lang, entry)

    async def _interaction_reply(self, turn: Turn, place: Place, interaction: Any, channel: Any, user: Any,
                                 created: float, may_hook: bool, lang: str, entry: Entry) -> str:
        reply = self.engine.reply(turn)
        link = self._recorder(reply, entry)
        look, hook = await self._look_and_hook(channel, turn.character, may_hook)
        # The token's 15 min count from the interaction's creation (its snowflake); a host clock that is
        # off must not kill it early, so the age taken off is at most a minute (or, resumed, the whole age).
        age = time.time() - created
        age = age if entry.progress.get("resumed") else min(max(age, 0.0), 60.0)
        deadline = time.monotonic() + self.cfg.interaction_token_ttl_s - age
        paths = [InteractionTransport(place.channel_id, self.pacer, self.counters, look, link,
                                      interaction=interaction, deadline=deadline,
                                      continued_note=text(TEXTS, "continued", lang)),
                 ChannelTransport(place.channel_id, self.pacer, self.counters, look, link, channel=channel),
                 *self._direct(place, user, look, link)]
        if hook is not None:
            paths.insert(0, self._webhook_transport(place, channel, hook, self.persona(turn.character), link))

        async def private(msg: str) -> bool:
            try:
                await interaction.delete_original_response()
                await interaction.followup.send(msg, ephemeral=True)
                return True
            except discord.HTTPException as e:
                log.info("could not answer privately: %s", e)
                return False

        live = not isinstance(interaction, ResumedInteraction)      # a resumed one has no private way
        sink = self._sink(paths, entry, private if hook is None and live else None)
        return await self._run(reply, sink, lang, entry)

    async def reply_to_message(self, message: discord.Message, content: str, *, lang: str,
                               conversation_id: str | None = None, mode: str = "chat",
                               character: str | None = None) -> str:
        """A mention, DM or reply to the bot: typing while queued, then a reply to the message."""
        channel = message.channel
        place = place_of(channel, message.author)
        turn = Turn(speaker=speaker_of(message.author, lang), scope=place.scope, text=content,
                    mode="roleplay" if character else mode, character=character, conversation_id=conversation_id,
                    request_key=f"discord:msg:{message.id}")
        may_hook = not place.dm and self._can_manage_webhooks(channel)
        entry = await self.journal.record(f"m{message.id}", journal_payload(
            "message", turn, place, lang, may_hook, message_id=message.id))
        if entry is None:
            return ""
        return await self._message_reply(turn, place, channel, message.author, message, may_hook, lang, entry,
                                          typing=self.cfg.typing)

    async def _message_reply(self, turn: Turn, place: Place, channel: Any, user: Any, reply_to: Any,
                             may_hook: bool, lang: str, entry: Entry, typing: bool) -> str:
        reply = self.engine.reply(turn)
        link = self._recorder(reply, entry)
        look, hook = await self._look_and_hook(channel, turn.character, may_hook)
        paths = [ChannelTransport(place.channel_id, self.pacer, self.counters, look, link,
                                  channel=channel, reply_to=reply_to),
                 *self._direct(place, user, look, link)]
        if hook is not None:
            paths.insert(0, self._webhook_transport(place, channel, hook, self.persona(turn.character), link))
        pieces = self._typing_until_first(reply, channel) if typing else reply
        return await self._run(reply, self._sink(paths, entry), lang, entry, pieces)

    # --- crash resume ----------------------------------------------------------------------------------

    def _sink(self, paths: list, entry: Entry, private=None) -> _Sink:
        """The sink over ``paths``; a resumed reply starts on the path its messages are on, editing them."""
        sent = entry.progress.get("sent") or []
        if not sent:
            return _Sink(paths[0], paths[1:], private)
        group = GROUPS[sent[-1][0]]
        start = next((i for i, p in enumerate(paths) if isinstance(p, group)), 0)
        sink = _Sink(paths[start], paths[start + 1:], private)
        client = self.client
        for kind, mid, cid in sent:
            if isinstance(paths[start], GROUPS[kind]):
                msg = client.get_partial_messageable(cid).get_partial_message(mid) if kind == "channel" \
                    else discord.Object(mid)
                sink.handles.append(Handle(kind, msg))
        sink.shown = [None] * len(sink.handles)      # their text is unknown: each gets one edit
        if isinstance(paths[start], InteractionTransport):
            paths[start]._original_used = any(k == "original" for k, _, _ in sent)
        return sink

    def _recorder(self, reply, entry: Entry):
        """Links each new message to the conversation and notes it in the journal (a resume edits it)."""
        link = self._linker(reply)

        async def on_message(handle: Handle) -> None:
            await link(handle.message.id)
            channel = getattr(handle.message, "channel", None)
            sent = [*entry.progress.get("sent", []), [handle.kind, handle.message.id, getattr(channel, "id", None)]]
            await entry.save(sent=sent)
        return on_message

    async def resume(self, entry: Entry, payload: dict) -> str:
        """Complete a reply an earlier run left unfinished: the engine replays or regenerates it by its key."""
        turn = turn_of(payload["turn"])
        place = Place(**{**payload["place"], "scopes": tuple(payload["place"]["scopes"])})
        channel = self.client.get_channel(place.channel_id) or await self.client.fetch_channel(place.channel_id)
        await entry.save(resumed=True)
        lang = payload["lang"]
        if payload["kind"] == "interaction":
            inter = ResumedInteraction(self.client, payload["token"], channel)
            return await self._interaction_reply(turn, place, inter, channel, None, payload["created_at"],
                                                 payload["may_hook"], lang, entry)
        reply_to = channel.get_partial_message(payload["message_id"])
        if not entry.progress.get("sent"):
            await self._adopt_orphan(entry, channel, payload["message_id"])
        return await self._message_reply(turn, place, channel, None, reply_to, payload["may_hook"], lang, entry,
                                         typing=False)

    async def _adopt_orphan(self, entry: Entry, channel: Any, asked_id: int) -> None:
        """A kill between Discord creating the reply and the journal noting its id leaves the reply unknown:
        find the bot's reply to the message in the channel, so it is edited rather than answered twice."""
        me = self.client.user.id if self.client.user else None
        try:
            async for msg in channel.history(after=discord.Object(asked_id), limit=ORPHAN_SEARCH, oldest_first=True):
                if msg.author.id == me and msg.reference is not None and msg.reference.message_id == asked_id:
                    await entry.save(sent=[["channel", msg.id, channel.id]])
                    return
        except discord.HTTPException as e:   # no history to read (permissions): a new message it is
            log.info("could not look for an earlier reply to %s: %s", asked_id, e)

    async def speak(self, channel: Any, place: Place, character: str, pieces: AsyncIterator[str], lang: str, *,
                    conversation_id: str | None = None, may_hook: bool | None = None, typing: bool = False) -> str:
        """One character's own message in a channel (a scene's reply or greeting): a new webhook message
        wearing its name and card image, else an embed; paced by the channel's budget like every reply."""
        if may_hook is None:
            may_hook = not place.dm and self._can_manage_webhooks(channel)
        look, hook = await self._look_and_hook(channel, character, may_hook)
        link = self._link_to(conversation_id)
        if hook is not None:
            transport = self._webhook_transport(place, channel, hook, self.persona(character), link)
        else:
            transport = ChannelTransport(place.channel_id, self.pacer, self.counters, look, link, channel=channel)
        shown = self._typing_until_first(pieces, channel) if typing and self.cfg.typing else pieces
        return await self._run(None, _Sink(transport), lang, None, shown)

    def _link_to(self, conversation_id: str | None):
        async def link(message_id: int) -> None:
            if conversation_id:
                try:
                    await self.engine.link_message(link_key(message_id), conversation_id)
                except StoreUnavailable as e:
                    log.warning("scene link for message %s not stored: %s", message_id, e.detail)
        return link

    @staticmethod
    def _can_manage_webhooks(channel: Any) -> bool:
        guild = getattr(channel, "guild", None)
        if guild is None or guild.me is None:
            return False
        try:
            return channel.permissions_for(guild.me).manage_webhooks
        except Exception:  # noqa: BLE001 - partial cache: let the webhook call itself decide (403 → embed)
            return True

    def _linker(self, reply):
        async def link(message_id: int) -> None:
            if reply.conversation_id:
                try:
                    await self.engine.link_message(link_key(message_id), reply.conversation_id)
                except StoreUnavailable as e:
                    log.warning("reply chain link for message %s not stored: %s", message_id, e.detail)
        return link

    async def _run(self, reply, sink: _Sink, lang: str, entry: Entry | None,
                   pieces: AsyncIterator[str] | None = None) -> str:
        """Deliver a reply (or, for a scene's line, ``pieces``); its journal ``entry`` is closed with the outcome."""
        def describe_error(e: Exception) -> str | None:
            sink.error = e
            if isinstance(e, EngineError):
                return describe(e, lang)
            return None

        outcome = "error"
        try:
            out = await deliver(reply if pieces is None else pieces, sink, interval=self.cfg.edit_interval_s,
                                describe_error=describe_error)
            outcome = "answered"
            return out
        except Undeliverable:           # every way was refused (logged by the sink); the reply stays stored
            outcome = "undeliverable"
            if reply is None:
                return ""
            reply.cancel("undeliverable")
            return reply.text
        except asyncio.CancelledError:
            outcome = ""                # shut down mid-reply: left in the journal, completed at the next start
            raise
        finally:
            if outcome and entry is not None:
                await self.journal.done(entry, outcome)
            self.replies_done += 1

    async def _typing_until_first(self, pieces: AsyncIterator[str], channel: Any) -> AsyncIterator[str]:
        """Show "typing…" while the model is queued; stop at the first piece of text."""
        typing = asyncio.create_task(self._keep_typing(channel))
        try:
            async for piece in pieces:
                if not typing.done():
                    typing.cancel()
                yield piece
        finally:
            typing.cancel()

    @staticmethod
    async def _keep_typing(channel: Any) -> None:
        # Discord shows typing for ~10 s per call.
        for _ in range(200):
            try:
                await channel.typing()
            except discord.HTTPException as e:
                log.info("typing indicator failed: %s", e)
                return
            await asyncio.sleep(8)
