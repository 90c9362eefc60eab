"""Prompt assembly: system text, optional blocks and the memory window fitted to the model's context."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

Message = dict[str, str]          # {"role": "system"|"user"|"assistant", "content": str}
TokenCounter = Callable[[list[Message]], int]


@dataclass(frozen=True)
class Block:
    """A piece of system text kept in its place (e.g. a lorebook entry before the character's description).

    ``drop_rank`` None: always kept. Otherwise it may be dropped, lowest rank
    first, but only when the system text does not fit even with no history
    (a lorebook entry is worth more than old history; see ``fit``).
    """

    text: str
    drop_rank: int | None = None


@dataclass
class PromptParts:
    """What a prompt is made of, in the order it is rendered.

    The system text is ``system``, then ``blocks`` (in order), then the
    ``droppable`` blocks (e.g. example dialogue). When the context is full the
    droppable blocks go first (last first), then the oldest ``history``
    messages, then (last resort) the blocks that have a ``drop_rank``.
    ``system``, the unranked blocks, ``post_history`` and the new ``user``
    message always stay.
    """

    system: str
    user: str
    history: list[Message] = field(default_factory=list)
    droppable: list[str] = field(default_factory=list)
    post_history: str = ""
    blocks: list[Block] = field(default_factory=list)


def _drop_sequence(blocks: list[Block]) -> list[int]:
    """Indices of droppable blocks in the order they are dropped (lowest rank, later first on ties)."""
    ranked = [(b.drop_rank, -i) for i, b in enumerate(blocks) if b.drop_rank is not None]
    return [-neg for _, neg in sorted(ranked)]


def assemble(parts: PromptParts, n_droppable: int, n_history: int, n_dropped_blocks: int = 0) -> list[Message]:
    gone = set(_drop_sequence(parts.blocks)[:n_dropped_blocks]) if n_dropped_blocks else set()
    kept = [b.text for i, b in enumerate(parts.blocks) if i not in gone]
    pieces = [parts.system, *kept, *parts.droppable[:n_droppable]]
    system = "\n\n".join(p for p in pieces if p.strip()).strip()
    messages: list[Message] = [{"role": "system", "content": system}] if system else []
    messages += parts.history[len(parts.history) - n_history:] if n_history else []
    if parts.post_history:
        messages.append({"role": "system", "content": parts.post_history})
    messages.append({"role": "user", "content": parts.user})
    return messages


def _most(lo: int, hi: int, fits: Callable[[int], bool]) -> int:
    """The largest n in [lo, hi] with fits(n), ``lo`` taken as fitting (fits is true up to some n)."""
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _most_growing(hi: int, fits: Callable[[int], bool]) -> int:
    """``_most(0, hi, fits)`` searched upwards (1, 2, 4, ...) so that few, small prompts are counted."""
    lo, n = 0, 1
    while lo < hi:
        n = min(n, hi)
        if not fits(n):
            return _most(lo, n - 1, fits)
        lo, n = n, n * 2
    return lo


def fit(parts: PromptParts, count: TokenCounter, budget: int) -> list[Message]:
    """The richest prompt whose token count is within ``budget``.

    Drops droppable blocks (last first), then the oldest history, then, only
    if the system text alone is still too long, ranked blocks (lowest rank
    first). History is searched from the newest message upwards, so a long
    stored history costs a few small counts (counting means rendering the
    chat template), not many large ones.
    """
    n_drop, n_hist = len(parts.droppable), len(parts.history)

    def fits(n_d: int, n_h: int, n_b: int = 0) -> bool:
        return count(assemble(parts, n_d, n_h, n_b)) <= budget

    kept = _most_growing(n_hist, lambda n: fits(0, n))
    if kept == n_hist:
        # the whole history fits: keep as many examples as fit with it
        return assemble(parts, _most(0, n_drop, lambda n: fits(n, n_hist)), n_hist)
    n_blocks = 0
    if kept == 0 and not fits(0, 0):
        n_ranked = len(_drop_sequence(parts.blocks))
        n_blocks = n_ranked - _most(0, n_ranked, lambda k: fits(0, 0, n_ranked - k))
        kept = _most_growing(n_hist, lambda n: fits(0, n, n_blocks))
    # A kept window that opens with a reply would show the model an answer without its question.
    if kept and parts.history[len(parts.history) - kept]["role"] == "assistant":
        kept -= 1
    return assemble(parts, 0, kept, n_blocks)


def clip(text: str, count_tokens: Callable[[str], int], budget: int) -> str:
    """The longest start of ``text`` (cut at a word where possible) within ``budget`` tokens."""
    if count_tokens(text) <= budget:
        return text
    n = _most(0, len(text), lambda k: count_tokens(text[:k]) <= budget)
    cut = text[:n]
    space = cut.rfind(" ")
    return (cut[:space] if space > n // 2 else cut).rstrip()
