"""The character registry: bot.yaml entries and card files, lookups, scopes, greetings, imports and hot reload."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import random
from pathlib import Path

import pytest

from engine.cards import Card, CharacterRegistry, card_to_png
from engine.cards.registry import scope_matches
from engine.errors import UnknownCharacter
from engine.settings import Cards, CharacterEntry

LOG = "test.cards.registry"


def write(path: Path, data: bytes | str, bump: list[int] = [0]) -> None:  # noqa: B006 (a counter on purpose)
    """Write and move the mtime forward, so a change is seen even on coarse clocks."""
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    bump[0] += 1
    t = path.stat().st_mtime_ns + bump[0] * 1_000_000_000
    os.utime(path, ns=(t, t))


def v1(name: str, **kw) -> str:
    return json.dumps({"name": name, "description": f"{name} desc", **kw})


@pytest.fixture
def tree(tmp_path):
    cards = tmp_path / "cards"
    cards.mkdir()
    aria = Card(name="Aria", description="{{char}} sings.", first_mes="Hello {{user}}!")
    write(cards / "aria.png", card_to_png(aria))
    write(cards / "bob.json", v1("Bob", first_mes="Yo {{user}}, I'm {{char}}", alternate_greetings=["Hey <USER>"],
                                  group_only_greetings=["Hi all"]))
    write(cards / "broken.png", b"\x89PNG\r\n\x1a\nnot really")
    write(cards / "notes.txt", "not a card")
    write(tmp_path / "bot.yaml", "characters: []\n")
    return tmp_path


ENTRIES = [
    CharacterEntry(card="cards/aria.png", name="Aria Prime", greeting="Hi {{user}} from {{char}}", model="chat",
                   channels=("discord:123", "telegram")),
    CharacterEntry(card="missing.png"),
]


def make(tree: Path, entries=ENTRIES, interval=0.05) -> CharacterRegistry:
    return CharacterRegistry(Cards(reload_interval_s=interval), entries, tree, config_file=tree / "bot.yaml",
                             log=logging.getLogger(LOG))


def test_start_skips_broken_and_missing_cards_with_one_line_each(tree, caplog):
    with caplog.at_level(logging.WARNING, logger=LOG):
        reg = make(tree)
    assert reg.names() == ["Aria Prime", "Bob"]
    lines = [r.getMessage() for r in caplog.records]
    assert any("broken.png" in m and "bad_png" in m and "skipped" in m for m in lines), lines
    assert any("missing.png" in m and "io_error" in m for m in lines), lines
    assert all("\n" not in m for m in lines)


def test_lookup_is_case_insensitive_and_knows_the_cards_own_name(tree):
    reg = make(tree)
    assert reg.get("aria prime").name == "Aria Prime"
    assert reg.get("ARIA").description == "{{char}} sings."      # the card's own name still finds it
    assert reg.get("bob").name == "Bob"
    assert reg.get("nobody") is None
    aria = reg.character("Aria Prime")
    assert (aria.model, aria.channels, aria.source) == ("chat", ("discord:123", "telegram"), "config")
    bob = reg.character("Bob")
    assert (bob.model, bob.channels, bob.source, bob.path.name) == ("roleplay", (), "file", "bob.json")
    assert [c.name for c in reg.entries()] == ["Aria Prime", "Bob"]


def test_scopes():
    assert scope_matches("discord:123", "discord:channel:123")
    assert scope_matches("discord:123", "discord:123")
    assert scope_matches("telegram", "telegram:chat:-100")
    assert not scope_matches("discord:123", "discord:channel:1234")
    assert not scope_matches("discord:123", "telegram:chat:123")
    assert not scope_matches("discord", "discordx:1")


def test_allowed(tree):
    reg = make(tree)
    assert reg.allowed("Aria Prime", "discord:channel:123")
    assert reg.allowed("aria prime", ["discord:thread:9", "discord:channel:123"])
    assert not reg.allowed("Aria Prime", "discord:channel:999")
    assert reg.allowed("Aria Prime", "telegram:chat:5")
    assert reg.allowed("Bob", "anything:1")
    assert not reg.allowed("Nobody", "discord:channel:123")


def test_greetings(tree):
    reg = make(tree)
    assert reg.greeting("aria prime", "Kim") == "Hi Kim from Aria Prime"
    seen = {reg.greeting("Bob", "Kim", random.Random(i)) for i in range(30)}
    assert seen == {"Yo Kim, I'm Bob", "Hey Kim"}
    assert "Hi all" in {reg.greeting("Bob", "Kim", random.Random(i), group=True) for i in range(40)}
    with pytest.raises(UnknownCharacter):
        reg.greeting("Nobody", "Kim")


def test_imported_cards_win_and_survive_reloads(tree):
    reg = make(tree)
    cleo = reg.add_imported(Card(name="Cleo", first_mes="Meow, {{user}}"))
    assert cleo.source == "imported" and "Cleo" in reg.names()
    reg.add_imported(Card(name="BOB", description="imported bob"))
    assert reg.get("bob").description == "imported bob"
    reg.reload()
    assert reg.get("cleo") is not None and reg.get("bob").description == "imported bob"
    assert reg.greeting("cleo", "Kim") == "Meow, Kim"
    assert reg.remove_imported("bob") and reg.get("bob").description == "Bob desc"
    assert not reg.remove_imported("bob")


async def until(check, timeout=5.0):
    """Wait (bounded) for ``check()`` to hold."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not check():
        assert loop.time() < end, "timed out waiting for the registry"
        await asyncio.sleep(0.02)


async def test_hot_reload_of_cards_and_config(tree, caplog):
    config_entries = {"value": ENTRIES}

    def reload_config():
        if isinstance(config_entries["value"], Exception):
            raise config_entries["value"]
        return config_entries["value"]

    reg = make(tree)
    task = asyncio.create_task(reg.watch(reload_config))
    try:
        with caplog.at_level(logging.INFO, logger=LOG):
            # a changed card is picked up
            write(tree / "cards/bob.json", v1("Bob", description="Bob, version two"))
            await until(lambda: reg.get("bob").description == "Bob, version two")

            # an invalid change: one log line naming the file and the problem, the old card stays
            caplog.clear()
            write(tree / "cards/bob.json", '{"name": "Bob", "description": ')
            await until(lambda: any("bob.json" in r.getMessage() for r in caplog.records))
            line = next(r.getMessage() for r in caplog.records if "bob.json" in r.getMessage())
            assert "bad_json" in line and "kept its previous version" in line
            assert reg.get("bob").description == "Bob, version two"

            # a new file appears, a deleted one goes
            write(tree / "cards/cleo.json", v1("Cleo"))
            await until(lambda: reg.get("cleo") is not None)
            assert reg.get("bob").description == "Bob, version two"
            (tree / "cards/cleo.json").unlink()
            await until(lambda: reg.get("cleo") is None)

            # bot.yaml changes: the new entries apply
            config_entries["value"] = [CharacterEntry(card="cards/aria.png", name="Aria Nova")]
            write(tree / "bot.yaml", "characters: [changed]\n")
            await until(lambda: reg.get("aria nova") is not None)
            assert reg.get("Aria Prime") is None and reg.allowed("Aria Nova", "discord:channel:999")

            # an invalid bot.yaml: one line, the set stays
            caplog.clear()
            config_entries["value"] = ValueError("characters.0.card: Field required (line 3)")
            write(tree / "bot.yaml", "characters: [broken\n")
            await until(lambda: any("bot.yaml" in r.getMessage() for r in caplog.records))
            assert any("Field required" in r.getMessage() and "kept the previous" in r.getMessage()
                       for r in caplog.records)
            assert reg.get("aria nova") is not None and reg.get("bob") is not None

            # the broken card fixed again is picked up
            write(tree / "cards/bob.json", v1("Bob", description="Bob, fixed"))
            await until(lambda: reg.get("bob").description == "Bob, fixed")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert task.cancelled()


async def test_watch_returns_at_once_when_reload_is_off(tree):
    reg = CharacterRegistry(Cards(reload=False), [], tree)
    await asyncio.wait_for(reg.watch(None), timeout=1)
    assert reg.names() == ["Aria", "Bob"]


def test_a_second_card_with_a_taken_name_is_skipped(tree, caplog):
    write(tree / "cards/zz_bob.json", v1("BOB", description="the other one"))
    with caplog.at_level(logging.WARNING, logger=LOG):
        reg = make(tree)
    assert reg.get("bob").description == "Bob desc"
    assert any("zz_bob.json" in r.getMessage() and "already taken" in r.getMessage() for r in caplog.records)


def test_discovery_can_be_turned_off(tree):
    reg = CharacterRegistry(Cards(), [CharacterEntry(card="aria.png")], tree, discover=False)
    assert reg.names() == ["Aria"]          # a path under cards/ works too
