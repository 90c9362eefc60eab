"""/memory show|pin|unpin|forget|edit: what the bot remembers of a user's conversation in this channel."""
from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable, Callable

import discord
from discord import app_commands

from bot.discord.conversation import speaker_of
from bot.discord.translator import desc
from bot.i18n import describe, memory_text, section, text

if TYPE_CHECKING:
    from bot.discord.commands import Commands

SUMMARY_INPUT_CHARS = 4000      # Discord's limit for a text input
MEMORY = section("memory")


class SummaryModal(discord.ui.Modal):
    """One paragraph field holding the summary; submitting it stores a new revision."""

    def __init__(self, lang: str, summary: str, save: Callable[[discord.Interaction, str], Awaitable[None]]):
        super().__init__(title=text(MEMORY, "edit_title", lang), timeout=900)
        self.lang, self.save = lang, save
        self.summary = discord.ui.TextInput(label=text(MEMORY, "summary", lang), style=discord.TextStyle.paragraph,
                                            default=summary[:SUMMARY_INPUT_CHARS] or None, required=False,
                                            max_length=SUMMARY_INPUT_CHARS)
        self.add_item(self.summary)

    async def on_submit(self, interaction: discord.Interaction) -> None:
        await self.save(interaction, self.summary.value)

    async def on_error(self, interaction: discord.Interaction, error: Exception) -> None:
        message = describe(error, self.lang)
        if interaction.response.is_done():
            await interaction.followup.send(message, ephemeral=True)
        else:
            await interaction.response.send_message(message, ephemeral=True)


def memory_group(cmds: "Commands") -> app_commands.Group:
    group = app_commands.Group(name="memory", description=desc("memory"))
    engine, conv = cmds.engine, cmds.conv

    async def start(interaction: discord.Interaction) -> tuple[str, str] | None:
        """(conversation id, language) once admitted and deferred; None if the user was refused."""
        if not await cmds.admit(interaction):
            return None
        await interaction.response.defer(ephemeral=True, thinking=True)
        lang = await conv.lang(interaction.user, interaction.locale, interaction.guild_locale)
        return await conv.conversation_here(interaction.user, interaction.channel), lang

    @group.command(name="show", description=desc("memory.show"))
    async def show(interaction: discord.Interaction) -> None:
        if (started := await start(interaction)) is None:
            return
        conv_id, lang = started
        await cmds.say(interaction, memory_text(await engine.memory_of(conv_id), lang, limit=2000))

    @group.command(name="pin", description=desc("memory.pin"))
    @app_commands.describe(text_=desc("memory.pin.text"))
    @app_commands.rename(text_="text")
    async def pin(interaction: discord.Interaction, text_: str) -> None:
        if (started := await start(interaction)) is None:
            return
        conv_id, lang = started
        memory = await engine.pin_fact(conv_id, text_, by=speaker_of(interaction.user).id)
        last = memory["pins"][-1]
        await cmds.say(interaction, text(MEMORY, "pinned", lang, n=last["n"], text=last["text"]))

    @group.command(name="unpin", description=desc("memory.unpin"))
    @app_commands.describe(n=desc("memory.unpin.n"))
    async def unpin(interaction: discord.Interaction, n: app_commands.Range[int, 1, 1000]) -> None:
        if (started := await start(interaction)) is None:
            return
        conv_id, lang = started
        removed = await engine.unpin_fact(conv_id, n)
        await cmds.say(interaction, text(MEMORY, "unpinned", lang, text=removed))

    @group.command(name="forget", description=desc("memory.forget"))
    async def forget(interaction: discord.Interaction) -> None:
        if (started := await start(interaction)) is None:
            return
        conv_id, lang = started
        await engine.forget(conv_id, by=speaker_of(interaction.user).id)
        await cmds.say(interaction, text(MEMORY, "forgot", lang))

    @group.command(name="edit", description=desc("memory.edit"))
    async def edit(interaction: discord.Interaction) -> None:
        # A modal must be the first answer (no defer), so only quick lookups happen before it.
        if not await cmds.admit(interaction):
            return
        lang = cmds.quick_lang(interaction)
        conv_id = await conv.conversation_here(interaction.user, interaction.channel)
        summary = (await engine.memory_of(conv_id))["summary"]

        async def save(submitted: discord.Interaction, value: str) -> None:
            await submitted.response.defer(ephemeral=True, thinking=True)
            await engine.edit_summary(conv_id, value, by=speaker_of(submitted.user).id)
            await submitted.followup.send(text(MEMORY, "edited", lang), ephemeral=True)

        await interaction.response.send_modal(SummaryModal(lang, summary["text"] if summary else "", save))

    return group
