"""The shared streaming rules: page splitting, paced edits, no unchanged edits, 429s, nothing lost or doubled."""
from __future__ import annotations

import asyncio
import random

import pytest

from bot.streaming import EditSink, RateLimited, deliver, split_text


@pytest.mark.parametrize("seed", range(20))
def test_split_joins_back_exactly_and_respects_the_limit(seed):
    rng = random.Random(seed)
    words = ["짧은", "word", "longer-word", "\n", "  ", "x" * rng.randint(1, 120), "문장입니다."]
    text = "".join(rng.choice(words) + rng.choice([" ", "", "\n"]) for _ in range(rng.randint(0, 800)))
    limit = rng.choice([50, 100, 2000, 4096])
    pages = split_text(text, limit)
    assert "".join(pages) == text
    assert all(len(p) <= limit for p in pages)
    assert all(p for p in pages[:-1])


def test_split_prefers_lines_then_words():
    text = "the first line here\nsecond line that is long " + "y" * 30
    assert split_text(text, 30)[0] == "the first line here\n"
    # a newline in the first half of the window would waste the message: the last space wins
    assert split_text("short\nthen a much longer line of words", 30)[0] == "short\nthen a much longer line "
    assert split_text("alpha beta gamma delta", 12) == ["alpha beta ", "gamma delta"]
    assert split_text("z" * 25, 10) == ["z" * 10, "z" * 10, "z" * 5]


class FakeTransport:
    """Records sends and edits; can answer 429 a given number of times."""

    def __init__(self, limit: int, fail_429: int = 0):
        self.limit = limit
        self.messages: list[str] = []
        self.calls: list[tuple[str, int, str]] = []
        self.fail_429 = fail_429

    def _maybe_429(self):
        if self.fail_429:
            self.fail_429 -= 1
            raise RateLimited(0.01)

    async def send(self, text: str) -> int:
        self._maybe_429()
        self.messages.append(text)
        self.calls.append(("send", len(self.messages) - 1, text))
        return len(self.messages) - 1

    async def edit(self, handle: int, text: str) -> None:
        self._maybe_429()
        assert self.messages[handle] != text, "an edit that changes nothing was sent"
        self.messages[handle] = text
        self.calls.append(("edit", handle, text))


async def pieces(text: str, n: int):
    step = max(1, len(text) // n)
    for i in range(0, len(text), step):
        await asyncio.sleep(0)
        yield text[i:i + step]


async def test_edit_sink_ends_with_exactly_the_text_across_messages():
    text = ("Lorem ipsum dolor sit amet, " * 40 + "\n") * 5           # ~5.6k chars
    t = FakeTransport(limit=2000, fail_429=3)
    shown = await deliver(pieces(text, 200), EditSink(t), interval=0.0, describe_error=lambda e: None)
    assert shown == text
    assert "".join(t.messages) == text
    assert len(t.messages) >= 3 and all(len(m) <= 2000 for m in t.messages)
    assert any(c[0] == "edit" for c in t.calls)
    assert not any("▌" in m for m in t.messages)                      # the indicator is gone at the end


async def test_updates_are_paced_by_the_interval():
    clock = iter(range(1000))
    t = FakeTransport(limit=2000)
    await deliver(pieces("abcdefghij" * 10, 100), EditSink(t), interval=10.0, describe_error=lambda e: None,
                  clock=lambda: next(clock))
    assert len(t.calls) <= 12            # 100 pieces, at most one update per 10 ticks, plus the final edit
    assert t.messages == ["abcdefghij" * 10]


async def test_an_error_keeps_the_partial_text_and_adds_the_message():
    async def broken():
        yield "partial answer"
        raise RuntimeError("model died")

    t = FakeTransport(limit=2000)
    await deliver(broken(), EditSink(t), interval=0.0, describe_error=lambda e: "sorry: " + str(e))
    assert t.messages == ["partial answer", "sorry: model died"]


async def test_rate_limit_that_never_ends_is_raised_not_swallowed():
    t = FakeTransport(limit=100, fail_429=100)
    with pytest.raises(RateLimited):
        await EditSink(t).finish("hello")
