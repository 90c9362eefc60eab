"""What a scene is, and who speaks next (names mentioned first, else a talkativeness draw)."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

DEFAULT_TALKATIVENESS = 0.5


@dataclass
class Scene:
    """One scene: the characters present (in the order they joined) and who spoke last.

    ``scope`` names where it lives ("discord:channel:1", "telegram:chat:5",
    "web:<session>:scene"); ``conversation_id`` is its one stored conversation.
    """

    scope: str
    conversation_id: str
    characters: list[str] = field(default_factory=list)
    auto_turns: int = 0
    last_speaker: str | None = None
    started_by: str = ""

    def has(self, name: str) -> bool:
        return any(c.casefold() == name.casefold() for c in self.characters)


def talkativeness(extensions: Mapping | None) -> float:
    """A card's ``extensions.talkativeness`` (SillyTavern writes it as a number or a string), 0–1, default 0.5."""
    raw = (extensions or {}).get("talkativeness", DEFAULT_TALKATIVENESS)
    try:
        value = float(raw)
    except (TypeError, ValueError):
        return DEFAULT_TALKATIVENESS
    return min(1.0, max(0.0, value)) if value == value else DEFAULT_TALKATIVENESS     # NaN: the default


def _is_word(c: str) -> bool:
    return c.isascii() and (c.isalnum() or c == "_")


def _find_name(text: str, name: str) -> int:
    """Where ``name`` first stands as a word in ``text`` (casefolded both), else -1.

    Latin letters or digits may not touch the name on either side ("Wrenfield"
    is not Wren); Korean particles may follow it ("하늘이", "Mina야").
    """
    start = 0
    while name:
        i = text.find(name, start)
        if i < 0:
            return -1
        before = text[i - 1] if i else " "
        after = text[i + len(name)] if i + len(name) < len(text) else " "
        if not before.isalnum() and not _is_word(after):
            return i
        start = i + 1
    return -1


def mentioned(text: str, names: Iterable[str]) -> list[str]:
    """The names that ``text`` mentions, in the order it first mentions them."""
    low = text.casefold()
    found = [(i, n) for n in names if (i := _find_name(low, n.casefold())) >= 0]
    return [n for _, n in sorted(found, key=lambda f: f[0])]


def draw(characters: Sequence[str], rng: random.Random, weight: Callable[[str], float],
         exclude: str | None = None) -> str:
    """One character, chosen with a chance proportional to its talkativeness; ``exclude`` only when alone."""
    pool = [c for c in characters if exclude is None or c.casefold() != exclude.casefold()] or list(characters)
    weights = [weight(c) for c in pool]
    if sum(weights) <= 0:
        weights = [1.0] * len(pool)
    return rng.choices(pool, weights)[0]


def next_speakers(message: str, scene: Scene, rng: random.Random,
                  weight: Callable[[str], float] = lambda _: DEFAULT_TALKATIVENESS) -> list[str]:
    """Who answers ``message``: every character it names, in the order named; else one drawn by talkativeness.

    The draw never picks the last speaker again unless it is the only
    character. An empty scene has no speakers.
    """
    if not scene.characters:
        return []
    named = mentioned(message, scene.characters)
    return named or [draw(scene.characters, rng, weight, scene.last_speaker)]


def parse_names(text: str, known: Iterable[str]) -> tuple[list[str], list[str]]:
    """(known names, unknown words) in ``text``: names separated by commas, or by spaces when names have none.

    Names with spaces ("Old Tom") are matched longest first, so
    ``/scene Old Tom Mina`` and ``Old Tom, Mina`` both work. Matching is
    case-insensitive; the known spelling is returned, each name once.
    """
    by_key = {n.casefold(): n for n in known}
    found: list[str] = []
    unknown: list[str] = []

    def add(name: str) -> None:
        if name not in found:
            found.append(name)

    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part.casefold() in by_key:
            add(by_key[part.casefold()])
            continue
        words, i = part.split(), 0
        while i < len(words):
            for j in range(len(words), i, -1):
                name = by_key.get(" ".join(words[i:j]).casefold())
                if name:
                    add(name)
                    i = j
                    break
            else:
                unknown.append(words[i])
                i += 1
    return found, unknown
