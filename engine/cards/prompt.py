"""The roleplay prompt of a card: system prompt, lorebook, character, examples, history and last instructions."""
from __future__ import annotations

from dataclasses import replace
from typing import Callable, Sequence

from engine.cards.lorebook import Lorebook, within_budget
from engine.cards.macros import apply_macros, replace_original, split_examples
from engine.cards.model import Card
from engine.prompts import Block, Message, PromptParts

LORE_SHARE = 4          # without a book budget, lore may take at most 1/LORE_SHARE of the context


def estimate_tokens(text: str) -> int:
    """A cautious token estimate when no tokenizer is given (about one token per Hangul syllable)."""
    return len(text.encode("utf-8")) // 3 + 1


def build_roleplay_parts(
    card: Card,
    user_name: str,
    history: Sequence[Message],
    user_text: str,
    default_prompt: str,
    count_tokens: Callable[[str], int] | None = None,
    budget: int | None = None,
) -> PromptParts:
    """The parts of a roleplay prompt, for ``engine.prompts.fit`` to trim to the context.

    Layout of the system text: the card's ``system_prompt`` (``{{original}}``
    is ``default_prompt``; an empty one means ``default_prompt``), lorebook
    entries placed ``before_char``, description, personality, scenario,
    entries placed ``after_char``, then the ``<START>`` example dialogues.
    ``post_history_instructions`` follow the history. When the context is
    full, ``fit`` drops the examples first, then lorebook entries (least
    important first), then the oldest history.

    Lorebook entries are those triggered by the last ``scan_depth`` messages
    (history and ``user_text``), limited to the book's ``token_budget``
    (counted with ``count_tokens``, text -> tokens) or, when it has none, to a
    quarter of ``budget`` (the prompt's token budget) if one is given.
    """
    char = card.display_name

    def m(text: str) -> str:
        return apply_macros(text, char, user_name).strip()

    system = m(replace_original(card.system_prompt, default_prompt) if card.system_prompt.strip() else default_prompt)
    book = Lorebook.from_dict(card.character_book)
    triggered = [replace(e, content=m(e.content)) for e in book.triggered([h["content"] for h in history] + [user_text])]
    lore_budget = book.token_budget if book.token_budget else (budget // LORE_SHARE if budget else None)
    lore = within_budget(triggered, count_tokens or estimate_tokens, lore_budget)
    rank = {e.index: r for r, e in enumerate(sorted(lore, key=lambda e: e.importance))}

    def lore_blocks(position: str) -> list[Block]:
        return [Block(e.content, rank[e.index]) for e in lore if e.position == position]

    character = [m(card.description)]
    if card.personality.strip():
        character.append(f"{char}'s personality: {m(card.personality)}")
    if card.scenario.strip():
        character.append(f"Scenario: {m(card.scenario)}")
    blocks = [*lore_blocks("before_char"), *(Block(t) for t in character if t), *lore_blocks("after_char")]
    examples = [f"Example of how {char} talks:\n{m(ex)}" for ex in split_examples(card.mes_example)]
    return PromptParts(
        system=system,
        user=user_text,
        history=list(history),
        droppable=examples,
        post_history=m(replace_original(card.post_history_instructions, "")),
        blocks=blocks,
    )
