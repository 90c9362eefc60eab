"""Korean localizations of the slash commands' descriptions, served to discord.py's command sync."""
from __future__ import annotations

from discord import Locale, app_commands

from bot.discord.texts import DESCRIPTIONS


def desc(key: str) -> app_commands.locale_str:
    """A description: English by default, translated by ``Translator`` (looked up by ``key``)."""
    return app_commands.locale_str(DESCRIPTIONS[key]["en"], key=key)


class Translator(app_commands.Translator):
    """Gives the Korean text for ko; Discord shows the English default to every other locale."""

    async def translate(self, string: app_commands.locale_str, locale: Locale, context) -> str | None:
        if locale is not Locale.korean:
            return None
        entry = DESCRIPTIONS.get(string.extras.get("key", ""))
        return entry["ko"] if entry else None
