"""The slash commands: /chat, /roleplay, /character list|info|use|import, /scene, /reset, /stop, /help, /lang, /memory."""
from __future__ import annotations

import io
import logging
from typing import Any

import discord
from discord import app_commands

from bot.discord.access import Access, who
from bot.discord.conversation import Conversations, place_of, speaker_of
from bot.discord.memory import memory_group
from bot.discord.scenes import SceneCommands
from bot.discord.texts import TEXTS
from bot.discord.translator import desc
from bot.i18n import describe, pick_lang, text
from engine.api import EngineAPI
from engine.cards import CardError
from engine.errors import EngineError

log = logging.getLogger(__name__)

EMBED_FIELD = 1024


def _clip(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


class _Tree(app_commands.CommandTree):
    """Runs each interaction once: a gateway resume may deliver an INTERACTION_CREATE again."""

    def __init__(self, client: discord.Client, seen):
        super().__init__(client)
        self.seen = seen

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        return self.seen.first_time(interaction.id)


class Commands:
    """Builds the command tree; each handler answers within Discord's 3 s (a reply, or a defer first)."""

    def __init__(self, client: discord.Client, engine: EngineAPI, conversations: Conversations, access: Access,
                 allow_dms: bool, card_limits, seen):
        self.client = client
        self.engine = engine
        self.conv = conversations
        self.access = access
        self.allow_dms = allow_dms
        self.card_limits = card_limits
        self.tree = _Tree(client, seen)
        self.tree.on_error = self.on_error
        self._build()
        self.scenes = SceneCommands(self)
        self.scenes.build(self.tree)

    # --- shared steps --------------------------------------------------------------------------------

    def quick_lang(self, interaction: discord.Interaction) -> str:
        """The language for an answer that must go out before any database call."""
        return self.conv.cached_lang(interaction.user.id) or pick_lang(
            str(interaction.locale), str(interaction.guild_locale or ""), default=self.conv.default_lang)

    async def admit(self, interaction: discord.Interaction, *, admin: bool = False) -> bool:
        """Access from bot.yaml (no I/O, so a denial still answers within 3 s); denials are private."""
        w = who(interaction.user, interaction.channel)
        lang = self.quick_lang(interaction)
        reason = None
        if interaction.guild_id is None and not self.allow_dms:
            reason = "dms_off"
        elif not self.access.allowed(w):
            reason = "denied"
        elif admin and not self.access.is_admin(w):
            reason = "admins_only"
        if reason:
            await interaction.response.send_message(text(TEXTS, reason, lang), ephemeral=True)
            return False
        return True

    async def say(self, interaction: discord.Interaction, message: str, **kw) -> None:
        """A private answer, whether or not the interaction was deferred."""
        if interaction.response.is_done():
            await interaction.followup.send(message, ephemeral=True, **kw)
        else:
            await interaction.response.send_message(message, ephemeral=True, **kw)

    def character_name(self, name: str, interaction: discord.Interaction, lang: str) -> tuple[str | None, str | None]:
        """(the registered name, None) or (None, a message why not)."""
        chars = self.engine.characters()
        card = chars.get(name)
        if card is None:
            return None, text(TEXTS, "unknown_character", lang, name=name)
        place = place_of(interaction.channel, interaction.user)
        if not chars.allowed(name, place.scopes):
            return None, text(TEXTS, "character_not_here", lang, name=card.display_name)
        return card.display_name, None

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        original = getattr(error, "original", error)
        lang = self.quick_lang(interaction)
        if isinstance(original, EngineError):
            log.info("/%s: %s", interaction.command and interaction.command.name, original)
        else:
            log.error("/%s failed", interaction.command and interaction.command.name, exc_info=original)
        try:
            await self.say(interaction, describe(original, lang))
        except discord.HTTPException:
            pass

    async def autocomplete_character(self, interaction: discord.Interaction, current: str):
        chars = self.engine.characters()
        place = place_of(interaction.channel, interaction.user)
        cur = current.casefold().strip()
        return [app_commands.Choice(name=n[:100], value=n[:100]) for n in chars.names()
                if cur in n.casefold() and chars.allowed(n, place.scopes)][:25]

    # --- the commands -------------------------------------------------------------------------------

    def _build(self) -> None:
        tree = self.tree

        @tree.command(name="chat", description=desc("chat"))
        @app_commands.describe(message=desc("chat.message"))
        async def chat(interaction: discord.Interaction, message: str) -> None:
            await self.converse(interaction, message, None)

        @tree.command(name="roleplay", description=desc("roleplay"))
        @app_commands.describe(character=desc("roleplay.character"), message=desc("roleplay.message"))
        @app_commands.autocomplete(character=self.autocomplete_character)
        async def roleplay(interaction: discord.Interaction, character: str, message: str) -> None:
            await self.converse(interaction, message, character)

        group = app_commands.Group(name="character", description=desc("character"))

        @group.command(name="list", description=desc("character.list"))
        async def character_list(interaction: discord.Interaction) -> None:
            await self.character_list(interaction)

        @group.command(name="info", description=desc("character.info"))
        @app_commands.describe(name=desc("character.name"))
        @app_commands.autocomplete(name=self.autocomplete_character)
        async def character_info(interaction: discord.Interaction, name: str) -> None:
            await self.character_info(interaction, name)

        @group.command(name="use", description=desc("character.use"))
        @app_commands.describe(name=desc("character.name"))
        @app_commands.autocomplete(name=self.autocomplete_character)
        async def character_use(interaction: discord.Interaction, name: str) -> None:
            await self.character_use(interaction, name)

        @group.command(name="import", description=desc("character.import"))
        @app_commands.describe(card=desc("character.card"))
        async def character_import(interaction: discord.Interaction, card: discord.Attachment) -> None:
            await self.character_import(interaction, card)

        tree.add_command(group)

        @tree.command(name="reset", description=desc("reset"))
        async def reset(interaction: discord.Interaction) -> None:
            if not await self.admit(interaction):
                return
            await interaction.response.defer(ephemeral=True, thinking=True)
            lang = await self.conv.lang(interaction.user, interaction.locale)
            place = place_of(interaction.channel, interaction.user)
            await self.engine.reset(speaker_of(interaction.user).id, place.scope)
            await self.say(interaction, text(TEXTS, "reset_done", lang))

        @tree.command(name="stop", description=desc("stop"))
        async def stop(interaction: discord.Interaction) -> None:
            # The engine answers from memory, at once: no defer needed within the 3 s.
            count = await self.engine.stop_replies_of(speaker_of(interaction.user).id)
            count += self.engine.stop_scene_replies(place_of(interaction.channel, interaction.user).scope)
            lang = self.quick_lang(interaction)
            await self.say(interaction, text(TEXTS, "stopped", lang, count=count) if count
                           else text(TEXTS, "nothing_to_stop", lang))

        @tree.command(name="help", description=desc("help"))
        async def help_(interaction: discord.Interaction) -> None:
            await self.say(interaction, text(TEXTS, "help", self.quick_lang(interaction)))

        @tree.command(name="lang", description=desc("lang"))
        @app_commands.describe(code=desc("lang.code"))
        @app_commands.choices(code=[app_commands.Choice(name=desc("lang.ko"), value="ko"),
                                    app_commands.Choice(name=desc("lang.en"), value="en")])
        async def lang(interaction: discord.Interaction, code: app_commands.Choice[str]) -> None:
            await interaction.response.defer(ephemeral=True, thinking=True)
            await self.conv.set_lang(interaction.user, code.value)
            await self.say(interaction, text(TEXTS, "lang_set", code.value))

        tree.add_command(memory_group(self))

    async def converse(self, interaction: discord.Interaction, message: str, character: str | None) -> None:
        if not await self.admit(interaction):
            return
        lang = self.quick_lang(interaction)
        if character is not None:
            character, why = self.character_name(character, interaction, lang)
            if why:
                await self.say(interaction, why)
                return
        if not message.strip():
            await self.say(interaction, text(TEXTS, "empty_message", lang))
            return
        await interaction.response.defer(thinking=True)     # Discord's 3 s: acknowledge before anything slow
        lang = await self.conv.lang(interaction.user, interaction.locale, interaction.guild_locale)
        await self.conv.reply_to_interaction(interaction, message, character=character, lang=lang)

    async def character_list(self, interaction: discord.Interaction) -> None:
        if not await self.admit(interaction):
            return
        lang = self.quick_lang(interaction)
        chars = self.engine.characters()
        place = place_of(interaction.channel, interaction.user)
        names = [n for n in chars.names() if chars.allowed(n, place.scopes)]
        if not names:
            await self.say(interaction, text(TEXTS, "no_characters", lang))
            return
        embed = discord.Embed(title=text(TEXTS, "characters", lang, count=len(names)),
                              description=_clip("\n".join(f"• {n}" for n in names), 4096))
        await self.say(interaction, "", embed=embed)

    async def _chosen_character(self, interaction: discord.Interaction, name: str) -> tuple[str, str] | None:
        """(character name, language) for /character info|use, or None once the user has been told why not."""
        if not await self.admit(interaction):
            return None
        lang = self.quick_lang(interaction)
        found, why = self.character_name(name, interaction, lang)
        if why:
            await self.say(interaction, why)
            return None
        return found, lang

    async def character_info(self, interaction: discord.Interaction, name: str) -> None:
        if (chosen := await self._chosen_character(interaction, name)) is None:
            return
        found, lang = chosen
        card = self.engine.characters().get(found)
        embed = discord.Embed(title=card.display_name, description=_clip(card.description or "—", 4096))
        if card.first_mes:
            embed.add_field(name=text(TEXTS, "first_message", lang), value=_clip(card.first_mes, EMBED_FIELD),
                            inline=False)
        kw: dict[str, Any] = {"embed": embed}
        if card.image:
            embed.set_image(url="attachment://card.png")
            kw["file"] = discord.File(io.BytesIO(card.image), filename="card.png")
        await self.say(interaction, "", **kw)

    async def character_use(self, interaction: discord.Interaction, name: str) -> None:
        if (chosen := await self._chosen_character(interaction, name)) is None:
            return
        found, lang = chosen
        await interaction.response.defer(ephemeral=True, thinking=True)
        place = place_of(interaction.channel, interaction.user)
        await self.engine.set_active_character(speaker_of(interaction.user).id, place.scope, found)
        await self.say(interaction, text(TEXTS, "character_used", lang, name=found))

    async def character_import(self, interaction: discord.Interaction, attachment: discord.Attachment) -> None:
        if not await self.admit(interaction, admin=True):
            return
        lang = self.quick_lang(interaction)
        limit = self.card_limits.max_file_bytes
        if attachment.size > limit:
            await self.say(interaction, text(TEXTS, "attachment_too_large", lang, limit=limit))
            return
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            data = await attachment.read()
        except discord.HTTPException as e:
            log.info("attachment %s not downloaded: %s", attachment.url, e)
            await self.say(interaction, text(TEXTS, "attachment_unreadable", lang))
            return
        try:
            character = await self.engine.import_card(data, by=speaker_of(interaction.user).id)
        except CardError as e:
            await self.say(interaction, text(TEXTS, "bad_card", lang, detail=_clip(e.message, 300)))
            return
        await self.say(interaction, text(TEXTS, "imported", lang, name=character.name))
