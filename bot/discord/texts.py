"""The Discord surface's texts, from the shared catalog (bot/locales)."""
from __future__ import annotations

from bot.i18n import section

# Slash-command and option descriptions: the English text is what Discord shows by default;
# the other languages are sent as localizations (see translator.py).
DESCRIPTIONS = section("discord.commands")
TEXTS = section("discord")
