"""Card macros: {{char}}/<BOT> and {{user}}/<USER> (any case), and {{original}} in a card's own prompts."""
from __future__ import annotations

import re

_NAMES = re.compile(r"\{\{\s*(char|user)\s*\}\}|<(bot|user)>", re.IGNORECASE)
_ORIGINAL = re.compile(r"\{\{\s*original\s*\}\}", re.IGNORECASE)


def apply_macros(text: str, char: str, user: str) -> str:
    """``text`` with the character's and the user's names in place of their macros."""
    def name(m: re.Match[str]) -> str:
        return char if (m.group(1) or m.group(2)).lower() in ("char", "bot") else user
    return _NAMES.sub(name, text)


def replace_original(text: str, original: str) -> str:
    """A card's system prompt with ``{{original}}`` standing for the bot's own default prompt."""
    return _ORIGINAL.sub(lambda _: original, text)


def split_examples(mes_example: str) -> list[str]:
    """The ``<START>``-separated example dialogues of a card, each stripped, empty ones left out."""
    return [block.strip() for block in re.split(r"<START>", mes_example, flags=re.IGNORECASE) if block.strip()]
