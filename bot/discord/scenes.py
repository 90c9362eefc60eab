"""Scenes on Discord: the /scene commands, and the messages of a scene channel answered by its characters."""
from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING, AsyncIterator

import discord
from discord import app_commands

from bot.discord.access import who
from bot.discord.conversation import Place, place_of, speaker_of
from bot.discord.translator import desc
from bot.i18n import describe, text
from bot.scene_texts import SCENE_TEXTS
from engine.errors import EngineError, StoreUnavailable
from engine.scenes import parse_names
from engine.settings import MAX_AUTO_TURNS
from engine.types import Turn

if TYPE_CHECKING:
    from bot.discord.commands import Commands

log = logging.getLogger(__name__)

START = "/scene start"
USAGE = "/scene start characters: Wren, Mina"


async def once(body: str) -> AsyncIterator[str]:
    """A fixed text as a one-piece stream (a greeting speaks through the same path as a reply)."""
    yield body


def _names(names: list[str]) -> str:
    return ", ".join(names) or "—"


class SceneCommands:
    """``/scene start|add|remove|auto|end|show`` on the Commands tree, and scene channels' messages."""

    def __init__(self, commands: "Commands"):
        self.c = commands
        self.engine = commands.engine
        self.conv = commands.conv

    # --- helpers ------------------------------------------------------------------------------

    def _allowed(self, place: Place) -> list[str]:
        chars = self.engine.characters()
        return [n for n in chars.names() if chars.allowed(n, place.scopes)]

    async def autocomplete_many(self, interaction: discord.Interaction, current: str):
        """Completes the last name of a comma-separated list ("Wren, Mi" → "Wren, Mina")."""
        head, _, last = current.rpartition(",")
        prefix = (head + ", ") if head.strip() else ""
        taken = {n.strip().casefold() for n in head.split(",")}
        cur = last.strip().casefold()
        names = [n for n in self._allowed(place_of(interaction.channel, interaction.user))
                 if cur in n.casefold() and n.casefold() not in taken]
        return [app_commands.Choice(name=(prefix + n)[:100], value=(prefix + n)[:100]) for n in names][:25]

    async def autocomplete_present(self, interaction: discord.Interaction, current: str):
        try:
            scene = await self.engine.scene(place_of(interaction.channel, interaction.user).scope)
        except StoreUnavailable:
            return []
        cur = current.strip().casefold()
        return [app_commands.Choice(name=n[:100], value=n[:100])
                for n in (scene.characters if scene else []) if cur in n.casefold()][:25]

    # --- the commands ---------------------------------------------------------------------------

    def build(self, tree: app_commands.CommandTree) -> None:
        group = app_commands.Group(name="scene", description=desc("scene"))

        @group.command(name="start", description=desc("scene.start"))
        @app_commands.describe(characters=desc("scene.characters"))
        @app_commands.autocomplete(characters=self.autocomplete_many)
        async def start(interaction: discord.Interaction, characters: str) -> None:
            await self.start(interaction, characters)

        def by_name(command: str, complete, action) -> None:
            """/scene add and /scene remove: one character name, completed from a different list."""

            @group.command(name=command, description=desc(f"scene.{command}"))
            @app_commands.describe(name=desc("character.name"))
            @app_commands.autocomplete(name=complete)
            async def run(interaction: discord.Interaction, name: str) -> None:
                await action(interaction, name)

        by_name("add", self.c.autocomplete_character, self.add)
        by_name("remove", self.autocomplete_present, self.remove)

        @group.command(name="auto", description=desc("scene.auto"))
        @app_commands.describe(turns=desc("scene.turns"))
        async def auto(interaction: discord.Interaction,
                       turns: app_commands.Range[int, 0, MAX_AUTO_TURNS]) -> None:
            await self.auto(interaction, turns)

        @group.command(name="end", description=desc("scene.end"))
        async def end(interaction: discord.Interaction) -> None:
            await self.end(interaction)

        @group.command(name="show", description=desc("scene.show"))
        async def show(interaction: discord.Interaction) -> None:
            await self.show(interaction)

        tree.add_command(group)

    async def _do(self, interaction: discord.Interaction, action) -> None:
        """Run one /scene command: ``action(place, lang)`` gives the public answer and the greetings to post."""
        if not await self.c.admit(interaction):
            return
        await interaction.response.defer(thinking=True)     # public: the scene is everyone's in the channel
        lang = await self.conv.lang(interaction.user, interaction.locale, interaction.guild_locale)
        place = place_of(interaction.channel, interaction.user)
        try:
            body, greetings, conversation_id = await action(place, lang)
        except EngineError as e:
            body, greetings, conversation_id = describe(e, lang), [], None
        await interaction.edit_original_response(content=body[:2000])
        may_hook = bool(interaction.app_permissions.manage_webhooks) and not place.dm
        for line in greetings:
            if line.content.strip():
                await self.conv.speak(interaction.channel, place, line.speaker, once(line.content), lang,
                                      conversation_id=conversation_id, may_hook=may_hook)

    async def start(self, interaction: discord.Interaction, characters: str) -> None:
        async def action(place: Place, lang: str):
            known = self.engine.characters().names()
            names, unknown = parse_names(characters, known)
            if unknown:
                return text(SCENE_TEXTS, "scene_unknown", lang, names=", ".join(unknown)), [], None
            if not names:
                return text(SCENE_TEXTS, "scene_usage", lang, usage=USAGE), [], None
            scene, greetings = await self.engine.start_scene(place.scope, names, speaker_of(interaction.user, lang),
                                                              place.scopes)
            body = text(SCENE_TEXTS, "scene_started", lang, names=_names(scene.characters))
            return body, greetings, scene.conversation_id
        await self._do(interaction, action)

    async def add(self, interaction: discord.Interaction, name: str) -> None:
        async def action(place: Place, lang: str):
            scene, greeting = await self.engine.add_to_scene(place.scope, name, speaker_of(interaction.user, lang),
                                                           place.scopes)
            if greeting is None:
                return text(SCENE_TEXTS, "scene_already", lang, name=name), [], None
            return (text(SCENE_TEXTS, "scene_added", lang, name=greeting.speaker), [greeting],
                    scene.conversation_id)
        await self._do(interaction, action)

    async def remove(self, interaction: discord.Interaction, name: str) -> None:
        async def action(place: Place, lang: str):
            await self.engine.remove_from_scene(place.scope, name)
            return text(SCENE_TEXTS, "scene_removed", lang, name=name), [], None
        await self._do(interaction, action)

    async def auto(self, interaction: discord.Interaction, turns: int) -> None:
        async def action(place: Place, lang: str):
            scene = await self.engine.set_scene_auto(place.scope, turns)
            key = "scene_auto" if scene.auto_turns else "scene_auto_off"
            return text(SCENE_TEXTS, key, lang, turns=scene.auto_turns), [], None
        await self._do(interaction, action)

    async def end(self, interaction: discord.Interaction) -> None:
        async def action(place: Place, lang: str):
            ended = await self.engine.end_scene(place.scope)
            return text(SCENE_TEXTS, "scene_ended" if ended else "scene_none", lang, start=START), [], None
        await self._do(interaction, action)

    async def show(self, interaction: discord.Interaction) -> None:
        async def action(place: Place, lang: str):
            scene = await self.engine.scene(place.scope)
            if scene is None:
                return text(SCENE_TEXTS, "scene_none", lang, start=START), [], None
            return text(SCENE_TEXTS, "scene_present", lang, names=_names(scene.characters),
                        auto=scene.auto_turns), [], None
        await self._do(interaction, action)

    # --- a scene channel's messages ------------------------------------------------------------

    async def on_message(self, message: discord.Message) -> bool:
        """Answer a human message in a channel with a scene; False when the channel has none."""
        place = place_of(message.channel, message.author)
        try:
            scene = await self.engine.scene(place.scope)
        except StoreUnavailable:
            return False
        if scene is None:
            return False
        me = self.c.client.user
        content = re.sub(rf"<@!?{me.id}>", "", message.content).strip() if me else message.content.strip()
        if not content or not self.c.access.allowed(who(message.author, message.channel)):
            return True                 # a scene channel's chatter the characters do not answer
        lang = await self.conv.lang(message.author)
        turn = Turn(speaker=speaker_of(message.author, lang), scope=place.scope, text=content,
                    request_key=f"discord:msg:{message.id}")
        try:
            async for speech in self.engine.scene_turn(turn):
                await self.conv.speak(message.channel, place, speech.character, speech, lang,
                                      conversation_id=speech.conversation_id, typing=True)
        except EngineError as e:
            log.info("scene message %s: %s", message.id, e)
            try:
                await message.reply(describe(e, lang), mention_author=False)
            except discord.HTTPException:
                pass
        return True
