"""The characters the bot offers: bot.yaml entries, card files in cards/ and run-time imports, hot-reloaded."""
from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Literal, Sequence

from engine.cards.errors import CardError
from engine.cards.files import load_card_file
from engine.cards.macros import apply_macros
from engine.cards.model import Card
from engine.errors import UnknownCharacter
from engine.settings import CharacterEntry, Cards

CARD_SUFFIXES = (".png", ".json")
MAX_DIR_FILES = 2000            # files looked at in cards/ (a mistaken huge folder must not stall the bot)
Signature = tuple[int, int]     # (mtime_ns, size); (-1, -1) for a missing file


@dataclass(frozen=True)
class Character:
    """One offered character: its card (display-name override applied) and how it may be used."""

    name: str
    card: Card
    model: Literal["roleplay", "chat"] = "roleplay"
    channels: tuple[str, ...] = ()          # empty: every scope
    greeting: str | None = None             # override of the card's greetings
    source: Literal["config", "file", "imported"] = "config"
    path: Path | None = None
    card_name: str = ""                     # the name in the card file, when an override hides it


def scope_matches(pattern: str, scope: str) -> bool:
    """Does a bot.yaml ``channels`` item allow ``scope``?

    Scopes are opaque colon-separated names chosen by the surfaces. A pattern
    matches a scope exactly or as a prefix (``a:b`` allows ``a:b:1``), and
    ``a:ID`` also allows any scope that starts with ``a`` and names ``ID`` in a
    later part (``a:kind:ID``). A surface that knows several scopes for one
    place (say a thread, its channel and its server) passes them all.
    """
    if pattern == scope or scope.startswith(pattern + ":"):
        return True
    platform, _, ident = pattern.partition(":")
    parts = scope.split(":")
    return bool(ident) and parts[0] == platform and ident in parts[1:]


class CharacterRegistry:
    """Characters by name (case-insensitive).

    bot.yaml entries come first; with ``discover`` every other card file
    directly in the cards folder is offered too (drop a card in, it works).
    At start a broken or missing card is logged and skipped. ``watch`` polls
    the files and swaps in a new set at once; a card that became invalid is
    logged (file and problem) and its previous version stays. Imported cards
    (``add_imported``) win over files of the same name and survive reloads.
    """

    def __init__(self, settings: Cards, entries: Sequence[CharacterEntry], base_dir: Path | str, *,
                 config_file: Path | str | None = None, discover: bool = True,
                 log: logging.Logger | None = None):
        self.settings = settings
        self.base_dir = Path(base_dir)
        self.cards_dir = (self.base_dir / settings.directory).resolve()
        self.config_file = Path(config_file) if config_file else None
        self.discover = discover
        self.log = log or logging.getLogger("engine.cards")
        self._entries = tuple(entries)
        self._parsed: dict[Path, tuple[Signature, Card | CardError]] = {}
        self._imported: dict[str, Character] = {}
        self._chars: dict[str, Character] = {}
        self._seen = self._snapshot()       # before building: a change made meanwhile is seen by watch()
        self._chars = self._build(self._entries, {})

    # ---- lookup -------------------------------------------------------

    def character(self, name: str) -> Character | None:
        key = name.strip().casefold()
        found = self._imported.get(key) or self._chars.get(key)
        if found:
            return found
        # the card's own name still finds a character shown under a nickname or an override
        return next((c for c in self._all() if key in (c.card.name.casefold(), c.card_name.casefold())), None)

    def get(self, name: str) -> Card | None:
        found = self.character(name)
        return found.card if found else None

    def names(self) -> list[str]:
        return [c.name for c in self._all()]

    def entries(self) -> list[Character]:
        return self._all()

    def _all(self) -> list[Character]:
        merged = dict(self._chars)
        merged.update(self._imported)
        return sorted(merged.values(), key=lambda c: c.name.casefold())

    def allowed(self, name: str, scope: str | Iterable[str]) -> bool:
        """May ``name`` be used in ``scope`` (one scope, or several, e.g. a thread and its channel)?"""
        found = self.character(name)
        if found is None:
            return False
        if not found.channels:
            return True
        scopes = [scope] if isinstance(scope, str) else list(scope)
        return any(scope_matches(p, s) for p in found.channels for s in scopes)

    def greeting(self, name: str, user_name: str, rng: random.Random | None = None, *, group: bool = False) -> str:
        """The opening message of a new roleplay: the override, else ``first_mes`` or a random alternate."""
        found = self.character(name)
        if found is None:
            raise UnknownCharacter(f"no character named {name!r}", name=name)
        if found.greeting:
            text = found.greeting
        else:
            choices = found.card.greetings(group=group)
            text = (rng or random.Random()).choice(choices) if choices else ""
        return apply_macros(text, found.card.display_name, user_name)

    def add_imported(self, card: Card) -> Character:
        """Offer a card imported at run time (the caller keeps it in the store); replaces one of the same name."""
        char = Character(name=card.display_name, card=card, source="imported")
        key = char.name.casefold()
        if key in self._chars:
            self.log.info("imported character %r replaces the one from %s", char.name, self._chars[key].path)
        self._imported = {**self._imported, key: char}
        return char

    def remove_imported(self, name: str) -> bool:
        key = name.strip().casefold()
        if key not in self._imported:
            return False
        self._imported = {k: v for k, v in self._imported.items() if k != key}
        return True

    # ---- loading ------------------------------------------------------

    def _resolve(self, card: str) -> Path:
        path = Path(card).expanduser()
        if path.is_absolute():
            return path
        first = (self.base_dir / path).resolve()
        if first.exists():
            return first
        under_cards = (self.cards_dir / path).resolve()
        return under_cards if under_cards.exists() else first

    def _load(self, path: Path) -> tuple[Card | CardError, bool]:
        """The card of ``path`` (or why not) and whether the file changed; it is parsed again only then."""
        sig = _signature(path)
        cached = self._parsed.get(path)
        if cached and cached[0] == sig:
            return cached[1], False
        try:
            result: Card | CardError = load_card_file(path, self.settings.limits)
        except CardError as e:
            result = e
        self._parsed[path] = (sig, result)
        return result, True

    def _build(self, entries: Sequence[CharacterEntry], previous: dict[str, Character]) -> dict[str, Character]:
        """A new set; a card that fails keeps its previous version if it had one, else is skipped."""
        before = {c.path: c for c in previous.values() if c.path}
        chars: dict[str, Character] = {}
        listed: set[Path] = set()
        wanted: list[tuple[Path, CharacterEntry | None]] = []
        for entry in entries:
            path = self._resolve(entry.card)
            listed.add(path)
            wanted.append((path, entry))
        if self.discover:
            wanted += [(p, None) for p in self._dir_cards() if p not in listed]
        for path, entry in wanted:
            loaded, changed = self._load(path)
            if isinstance(loaded, CardError):
                old = before.get(path)
                if changed:         # an unchanged broken file was reported when it broke
                    self.log.warning("character card %s; %s", loaded,
                                     "kept its previous version" if old else "skipped")
                if old:
                    chars.setdefault(old.name.casefold(), old)
                continue
            char = self._character(loaded, entry, path)
            key = char.name.casefold()
            if key in chars:
                if changed:
                        self.log.warning("character card %s: the name %r is already taken by %s; skipped",
                                     path, char.name, chars[key].path)
                continue
            chars[key] = char
        return chars

    def _character(self, card: Card, entry: CharacterEntry | None, path: Path) -> Character:
        if entry is None:
            return Character(name=card.display_name, card=card, source="file", path=path)
        card_name = card.name
        if entry.name:
            card = replace(card, name=entry.name, nickname="")
        return Character(name=card.display_name, card=card, model=entry.model, channels=entry.channels,
                         greeting=entry.greeting, source="config", path=path, card_name=card_name)

    def _dir_cards(self) -> list[Path]:
        try:
            files = sorted(p for p in self.cards_dir.iterdir() if p.suffix.lower() in CARD_SUFFIXES and p.is_file())
        except OSError:
            return []
        return [p.resolve() for p in files[:MAX_DIR_FILES]]

    # ---- hot reload ---------------------------------------------------

    def _snapshot(self) -> dict[Path, Signature]:
        paths = {self._resolve(e.card) for e in self._entries}
        if self.discover:
            paths.update(self._dir_cards())
        if self.config_file:
            paths.add(self.config_file)
        return {p: _signature(p) for p in paths}

    def reload(self, entries: Sequence[CharacterEntry] | None = None) -> None:
        """Build the set again (with new bot.yaml entries if given) and swap it in."""
        if entries is not None:
            self._entries = tuple(entries)
        self._seen = self._snapshot()
        self._chars = self._build(self._entries, self._chars)

    async def watch(self, reload_config: Callable[[], Sequence[CharacterEntry]] | None = None) -> None:
        """Poll bot.yaml and the card files every ``reload_interval_s`` until cancelled.

        ``reload_config`` reads bot.yaml's ``characters`` again; if it raises,
        one line is logged and the current set stays.
        """
        if not self.settings.reload:
            return
        interval = max(0.05, self.settings.reload_interval_s)
        while True:
            await asyncio.sleep(interval)
            now = await asyncio.to_thread(self._snapshot)
            if now == self._seen:
                continue
            entries = None
            config_changed = self.config_file and now.get(self.config_file) != self._seen.get(self.config_file)
            if reload_config is not None and config_changed:
                try:
                    entries = tuple(await asyncio.to_thread(reload_config))
                except Exception as e:      # any config error: the bot keeps running on the old set
                    self.log.warning("%s: %s; kept the previous characters", self.config_file, _one_line(e))
            previous_entries = self._entries
            if entries is not None:
                self._entries = entries
            try:
                new = await asyncio.to_thread(self._build, self._entries, self._chars)
            except Exception as e:          # a bug here must not end hot reload nor the bot
                self.log.warning("reloading characters failed: %s; kept the previous characters", _one_line(e))
                self._entries = previous_entries
                self._seen = now
                continue
            if new != self._chars:
                self.log.info("characters reloaded: %s", ", ".join(c.name for c in new.values()) or "none")
            self._chars = new
            # what was seen before the build: anything changed or added since then triggers one more reload
            self._seen = now


def _signature(path: Path) -> Signature:
    try:
        st = path.stat()
    except OSError:
        return (-1, -1)
    return (st.st_mtime_ns, st.st_size)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())[:500] or type(e).__name__
