"""The roleplay prompt of a card: macros, greetings, lorebook insertion and trimming to the context."""
from __future__ import annotations

import random

from engine.cards import Card, build_roleplay_parts
from engine.cards.macros import apply_macros, replace_original, split_examples
from engine.prompts import Block, PromptParts, assemble, fit

DEFAULT = "You are {{char}}, talking with {{user}}."


def entry(content, keys=(), **kw):
    return {"keys": list(keys), "content": content, "enabled": True, "insertion_order": 100, "extensions": {}, **kw}


def card_with(entries=(), **kw) -> Card:
    book = {"entries": list(entries), "extensions": {}, **kw.pop("book", {})}
    return Card(name="Aria", description="{{char}} guards the {{user}}'s library.", personality="calm",
                scenario="A rainy evening.", character_book=book, **kw)


def system_of(parts: PromptParts) -> str:
    return assemble(parts, len(parts.droppable), len(parts.history))[0]["content"]


def words(messages) -> int:
    return sum(len(m["content"].split()) for m in messages)


# ---- macros -----------------------------------------------------------------

def test_macros_any_case_and_both_spellings():
    text = "{{char}} {{CHAR}} {{ Char }} <BOT> <bot> / {{user}} {{User}} <USER> <user> {{other}}"
    assert apply_macros(text, "Aria", "Kim") == "Aria Aria Aria Aria Aria / Kim Kim Kim Kim {{other}}"
    assert apply_macros("{{user}}", "A", r"\1 $0") == r"\1 $0"     # names are text, not patterns
    assert replace_original("x {{ORIGINAL}} y", "base") == "x base y"
    assert split_examples("<START>\na\n<start>\n\nb\n<START>") == ["a", "b"]


def test_system_prompt_original_nickname_and_post_history():
    card = Card(name="Aria Long-Name", nickname="Ari", system_prompt="{{original}} Extra for <BOT>.",
                post_history_instructions="{{original}}Stay as {{char}}; {{user}} speaks for themself.",
                description="{{char}} reads.", mes_example="<START>\n{{user}}: hi\n{{char}}: hello")
    parts = build_roleplay_parts(card, "Kim", [], "hello", DEFAULT)
    assert parts.system == "You are Ari, talking with Kim. Extra for Ari."
    assert parts.post_history == "Stay as Ari; Kim speaks for themself."
    assert [b.text for b in parts.blocks] == ["Ari reads."]
    assert parts.droppable == ["Example of how Ari talks:\nKim: hi\nAri: hello"]
    assert parts.user == "hello"
    assert build_roleplay_parts(Card(name="B"), "Kim", [], "x", DEFAULT).system == "You are B, talking with Kim."


def test_card_greetings():
    card = Card(name="Aria", first_mes="Hi {{user}}", alternate_greetings=["Yo <USER>", "  "],
                group_only_greetings=["Hello all"])
    assert card.greetings() == ["Hi {{user}}", "Yo <USER>"]
    assert card.greetings(group=True)[-1] == "Hello all"
    seen = {random.Random(i).choice(card.greetings()) for i in range(20)}
    assert seen == {"Hi {{user}}", "Yo <USER>"}


# ---- lorebook ---------------------------------------------------------------

def test_lorebook_triggers_only_on_recent_messages():
    card = card_with([entry("DRAGON LORE", ["dragon"])], book={"scan_depth": 2})
    hist = [{"role": "user", "content": "tell me of the dragon"}, {"role": "assistant", "content": "Later."},
            {"role": "user", "content": "ok"}]
    assert "DRAGON LORE" not in system_of(build_roleplay_parts(card, "Kim", hist, "and now?", DEFAULT))
    assert "DRAGON LORE" in system_of(build_roleplay_parts(card, "Kim", hist[:1], "and now?", DEFAULT))
    assert "DRAGON LORE" in system_of(build_roleplay_parts(card, "Kim", hist, "A Dragon!", DEFAULT))


def test_lorebook_flags():
    card = card_with([
        entry("CASE", ["Moon"], case_sensitive=True),
        entry("OFF", ["moon"], enabled=False),
        entry("ALWAYS", [], constant=True),
        entry("SELECTIVE", ["moon"], selective=True, secondary_keys=["tide"]),
        entry("REGEX", [r"/\bst(a|o)rs?\b/i"], use_regex=True),
        entry("PLAIN-REGEX-TEXT", [r"st(a|o)rs?"]),
        entry("BROKEN", ["/[/"], use_regex=True),
        entry("한국어", ["달빛"]),
    ])
    s = system_of(build_roleplay_parts(card, "Kim", [], "the moon and the STARS", DEFAULT))
    assert "ALWAYS" in s and "REGEX" in s
    for absent in ("CASE", "OFF", "SELECTIVE", "PLAIN-REGEX-TEXT", "BROKEN", "한국어"):
        assert absent not in s, absent
    s = system_of(build_roleplay_parts(card, "Kim", [], "Moon over the tide, 달빛", DEFAULT))
    for present in ("CASE", "SELECTIVE", "한국어", "ALWAYS"):
        assert present in s, present


def test_lorebook_order_position_and_macros():
    card = card_with([
        entry("late before {{char}}", ["key"], insertion_order=50, position="before_char"),
        entry("early before", ["key"], insertion_order=1),
        entry("after for {{user}}", ["key"], insertion_order=5, position="after_char"),
    ])
    s = system_of(build_roleplay_parts(card, "Kim", [], "key", DEFAULT))
    order = [s.index(t) for t in ("You are Aria", "early before", "late before Aria", "Aria guards the Kim's library",
                                  "Aria's personality: calm", "Scenario: A rainy evening.", "after for Kim")]
    assert order == sorted(order)


def test_lorebook_token_budget_keeps_the_most_important():
    count = lambda text: len(text.split())     # noqa: E731
    card = card_with([
        entry("one two three four", ["k"], insertion_order=10),
        entry("five six seven", ["k"], insertion_order=30),
        entry("eight nine", ["k"], insertion_order=20, priority=1),
    ], book={"token_budget": 7})
    s = system_of(build_roleplay_parts(card, "Kim", [], "k", DEFAULT, count_tokens=count))
    assert "five six seven" in s and "one two three four" in s and "eight nine" not in s
    unbounded = card_with([entry("w " * 50, ["k"]), entry("small", ["k"])])
    s = system_of(build_roleplay_parts(unbounded, "Kim", [], "k", DEFAULT, count_tokens=count, budget=100))
    assert "small" in s and "w w" not in s        # without a book budget, lore gets a quarter of the context


def test_seraphina_like_lore_from_a_real_card():
    from pathlib import Path
    import pytest
    from engine.cards import load_card_file
    path = Path(__file__).resolve().parents[2] / "shared/testdata/cards/seraphina_v2.png"
    if not path.exists():
        pytest.skip(f"the card made by another tool is not here: {path}")
    card = load_card_file(path)
    s = system_of(build_roleplay_parts(card, "Kim", [], "What are the Shadowfang beasts?", DEFAULT))
    assert "What are Shadowfangs?" in s and "What is Eldoria?" not in s
    assert "Kim: \"What are Shadowfangs?\"" in s and "{{user}}" not in s


# ---- trimming ---------------------------------------------------------------

def trimming_parts() -> PromptParts:
    card = card_with([entry("LORE-LOW " * 5, ["key"], insertion_order=1),
                      entry("LORE-HIGH " * 5, ["key"], insertion_order=90)],
                     mes_example="<START>\n{{user}}: EX-ONE\n{{char}}: a b c\n<START>\n{{user}}: EX-TWO\n{{char}}: d e f")
    history = []
    for i in range(6):
        history += [{"role": "user", "content": f"question {i} key"}, {"role": "assistant", "content": f"answer {i}"}]
    return build_roleplay_parts(card, "Kim", history, "key again", DEFAULT)


def test_full_budget_keeps_everything():
    parts = trimming_parts()
    full = assemble(parts, 2, 12)
    assert fit(parts, words, words(full)) == full
    assert "EX-TWO" in full[0]["content"] and "LORE-LOW" in full[0]["content"]


def test_examples_go_first_last_first():
    parts = trimming_parts()
    out = fit(parts, words, words(assemble(parts, 1, 12)))
    assert "EX-ONE" in out[0]["content"] and "EX-TWO" not in out[0]["content"]
    assert "LORE-LOW" in out[0]["content"] and len(out) == 12 + 2


def test_then_old_history_while_lore_and_the_character_stay():
    parts = trimming_parts()
    out = fit(parts, words, words(assemble(parts, 0, 5)))
    s = out[0]["content"]
    assert "EX-" not in s and "LORE-LOW" in s and "LORE-HIGH" in s
    assert "Aria guards the Kim's library" in s and "Scenario" in s
    history = out[1:-1]
    assert history[0]["role"] == "user" and history[0]["content"] == "question 4 key"   # no reply without its question
    assert len(history) == 4 and out[-1] == {"role": "user", "content": "key again"}


def test_lorebook_goes_last_least_important_first():
    parts = trimming_parts()
    out = fit(parts, words, words(assemble(parts, 0, 0, 1)))
    s = out[0]["content"]
    assert "LORE-LOW" not in s and "LORE-HIGH" in s and len(out) == 2
    out = fit(parts, words, words(assemble(parts, 0, 0, 2)))
    assert "LORE" not in out[0]["content"] and "Aria guards" in out[0]["content"] and len(out) == 2
    tiny = fit(parts, words, 1)         # nothing fits: system, character and the new message still stay
    assert [m["role"] for m in tiny] == ["system", "user"] and "Aria guards" in tiny[0]["content"]


def test_long_history_costs_few_small_counts():
    parts = trimming_parts()
    parts.history = parts.history * 100         # 1200 messages
    sizes = []

    def counting(messages):
        sizes.append(len(messages))
        return words(messages)

    out = fit(parts, counting, words(assemble(parts, 0, 9)))
    assert len(out) == 1 + 8 + 1
    assert len(sizes) <= 12 and max(sizes) <= 2 * 16 + 2, sizes


def test_blocks_without_rank_are_kept_and_old_callers_unchanged():
    parts = PromptParts(system="S", user="u", droppable=["D1", "D2"],
                        history=[{"role": "user", "content": "h1"}, {"role": "assistant", "content": "h2"}])
    assert assemble(parts, 2, 2)[0]["content"] == "S\n\nD1\n\nD2"
    assert fit(parts, lambda m: len(m), 3)[0]["content"] == "S"
    assert fit(parts, lambda m: len(m), 99)[0]["content"] == "S\n\nD1\n\nD2"
    ranked = PromptParts(system="S", user="u", blocks=[Block("A", 2), Block("KEEP"), Block("B", 1)])
    assert assemble(ranked, 0, 0, 1)[0]["content"] == "S\n\nA\n\nKEEP"
    assert assemble(ranked, 0, 0, 2)[0]["content"] == "S\n\nKEEP"
