"""What the Telegram bot says, from the shared catalog (bot/locales)."""
from __future__ import annotations

from bot.i18n import catalog, section

TEXTS = section("telegram")
# (command, description) for setMyCommands, per language.
COMMANDS: dict[str, list[tuple[str, str]]] = {lang: list(texts["telegram.menu"].items())
                                              for lang, texts in catalog().items()}
