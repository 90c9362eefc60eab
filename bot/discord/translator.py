"""Localizations of the slash commands' descriptions (every catalog language), served to discord.py's sync."""
from __future__ import annotations

from discord import Locale, app_commands

from bot.discord.texts import DESCRIPTIONS
from bot.i18n import FALLBACK, languages


def desc(key: str) -> app_commands.locale_str:
    """A description: English by default, translated by ``Translator`` (looked up by ``key``)."""
    return app_commands.locale_str(DESCRIPTIONS[key][FALLBACK], key=key)


class Translator(app_commands.Translator):
    """Gives the catalog's text for each Discord locale it has a language file for ("ko", "es-ES" → "es");
    Discord shows the English default to every other locale."""

    async def translate(self, string: app_commands.locale_str, locale: Locale, context) -> str | None:
        lang = locale.value.split("-")[0]
        if lang == FALLBACK or lang not in languages():
            return None
        entry = DESCRIPTIONS.get(string.extras.get("key", ""))
        return entry.get(lang) if entry else None
