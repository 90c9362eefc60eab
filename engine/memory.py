"""A conversation's memory beyond the window: the rolling summary and pinned facts, in the prompt and on command.

The window is the newest messages that ``engine.prompts.fit`` keeps. Messages a
summary covers are no longer offered to the window (the summary stands for
them); the ones that ``fit`` leaves out and no summary covers yet are folded
into the summary in the background (``engine.summarizer``) once they reach
``memory.trigger`` tokens. Nothing is deleted: summaries are revisions, unpinned
facts are marked removed, messages stay.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.errors import MemoryOff, PinRejected, UnknownPin
from engine.prompts import Block, Message, clip
from engine.settings import Memory
from engine.store.repository import Store
from engine.summarizer import FoldRequest, Summarizer, covered_until

if TYPE_CHECKING:
    from engine.engine import Model

# Ranks above any lorebook entry's: only when the system text alone overflows is the summary dropped, then pins.
SUMMARY_RANK = 1_000_000
PINS_RANK = 1_000_001

HEADERS = {
    "chat": ("Summary of the earlier conversation:", "Facts to remember:"),
    "roleplay": ("Story so far:", "Facts to remember:"),
}


@dataclass
class Recall:
    """What a conversation remembers beyond its window, read once per turn."""

    summary: dict | None = None
    pins: list[dict] = field(default_factory=list)

    @property
    def after_ts(self) -> int | None:
        """The window starts after the newest message the summary covers."""
        return covered_until(self.summary)


def summary_view(doc: dict | None) -> dict | None:
    if doc is None:
        return None
    return {"text": doc["text"], "revision": doc["rev"], "by": doc["by"], "ts": doc["ts"],
            "covers": doc.get("covers") or None}


def pins_view(pins: list[dict]) -> list[dict]:
    return [{"n": i, "id": p["_id"], "text": p["text"], "ts": p["ts"]} for i, p in enumerate(pins, 1)]


class ConversationMemory:
    """Summaries and pins of every conversation; the engine asks it for prompt blocks and tells it what fell out."""

    def __init__(self, cfg: Memory, store: Store):
        self.cfg, self.store = cfg, store
        self.summarizer = Summarizer(cfg, store)

    @property
    def enabled(self) -> bool:
        return self.cfg.enabled

    def summary_budget(self, model: "Model") -> int:
        return self.cfg.summary_tokens or model.backend.n_ctx // 4

    def pin_budget(self, model: "Model") -> int:
        return self.cfg.pin_tokens or model.backend.n_ctx // 8

    # the prompt ---------------------------------------------------------------------------------

    async def recall(self, conv_id: str) -> Recall:
        if not self.enabled:
            return Recall()
        return Recall(await self.store.latest_summary(conv_id), await self.store.pins(conv_id))

    def blocks(self, recall: Recall, model: "Model", mode: str) -> list[Block]:
        """The summary then the pins, each clipped to its budget, for the system text after the card."""
        count = model.backend.count_tokens
        summary_head, pins_head = HEADERS[mode]
        out: list[Block] = []
        text = recall.summary["text"].strip() if recall.summary else ""
        if text:
            out.append(Block(f"{summary_head}\n{clip(text, count, self.summary_budget(model))}", SUMMARY_RANK))
        lines = _lines_within([p["text"] for p in recall.pins], count, self.pin_budget(model))
        if lines:
            out.append(Block("\n".join([pins_head, *lines]), PINS_RANK))
        return out

    @staticmethod
    def out_of_window(docs: list[dict], history: list[Message], prompt: list[Message]) -> list[dict]:
        """The stored messages (``docs``, one per ``history`` entry) that ``fit`` left out of ``prompt``."""
        kept = {id(m) for m in prompt}
        return [d for d, h in zip(docs, history) if id(h) not in kept]

    def after_reply(self, conv_id: str, dropped: list[dict], reader: "Model", writer: "Model",
                    user: str, char: str | None) -> bool:
        """Start folding ``dropped`` into the summary once it reaches ``memory.trigger`` tokens; whether it started."""
        if not (self.enabled and dropped):
            return False
        total = 0
        for d in dropped:
            total += reader.backend.count_tokens(d["content"])
            if total >= self.cfg.trigger:
                return self.summarizer.schedule(FoldRequest(conv_id, writer, dropped, self.summary_budget(reader),
                                                            user, char))
        return False

    def yield_to(self, model: "Model") -> int:
        return self.summarizer.yield_to(model.queue)

    # commands -----------------------------------------------------------------------------------

    def _check(self) -> None:
        if not self.enabled:
            raise MemoryOff("memory.enabled is false")

    async def show(self, conv_id: str) -> dict:
        """``{"summary": {...} | None, "pins": [{"n", "id", "text", "ts"}, ...]}``."""
        recall = await self.recall(conv_id)
        return {"summary": summary_view(recall.summary), "pins": pins_view(recall.pins)}

    async def pin(self, conv_id: str, text: str, by: str, model: "Model") -> dict:
        self._check()
        text = " ".join(text.split())
        if not text:
            raise PinRejected("empty fact", reason="empty")
        if len(text) > self.cfg.pin_chars:
            raise PinRejected(f"fact longer than {self.cfg.pin_chars} chars", reason="too_long",
                              limit=self.cfg.pin_chars)
        pins = [p["text"] for p in await self.store.pins(conv_id)] + [text]
        budget = self.pin_budget(model)
        if len(_lines_within(pins, model.backend.count_tokens, budget)) < len(pins):
            raise PinRejected(f"pins would exceed {budget} tokens", reason="full", limit=budget)
        await self.store.add_pin(conv_id, text, by)
        return await self.show(conv_id)

    async def unpin(self, conv_id: str, n: int) -> str:
        """Unpin fact number ``n`` (1 = oldest, as ``show`` numbers them); its text."""
        self._check()
        pins = await self.store.pins(conv_id)
        if not 1 <= n <= len(pins):
            raise UnknownPin(f"no pin {n} (there are {len(pins)})", n=n, count=len(pins))
        await self.store.remove_pins(conv_id, [pins[n - 1]["_id"]])
        return pins[n - 1]["text"]

    async def edit_summary(self, conv_id: str, text: str, by: str) -> dict:
        """A new summary revision with the given text; it covers what the previous one covered."""
        self._check()
        self.summarizer.cancel(conv_id)
        await self._revise(conv_id, text.strip(), by)
        return await self.show(conv_id)

    async def forget(self, conv_id: str, by: str) -> None:
        """Clear the summary (an empty revision) and unpin every fact; the messages stay stored."""
        self._check()
        self.summarizer.cancel(conv_id)
        await self._revise(conv_id, "", by)
        await self.store.remove_pins(conv_id)

    async def _revise(self, conv_id: str, text: str, by: str) -> None:
        # The unique (conv_id, rev) index refuses a revision a fold wrote in between: read again and retry.
        for _ in range(5):
            prev = await self.store.latest_summary(conv_id)
            if prev is None and not text:
                return
            rev = prev["rev"] + 1 if prev else 1
            if await self.store.add_summary(conv_id, rev, text, prev["covers"] if prev else {}, by=by):
                return
        raise RuntimeError(f"summary of {conv_id} kept changing")

    async def close(self) -> None:
        await self.summarizer.close()


def _lines_within(texts: list[str], count, budget: int) -> list[str]:
    """Pinned facts as "- fact" lines, oldest first, as many as fit ``budget`` tokens together."""
    lines: list[str] = []
    for text in texts:
        if count("\n".join([*lines, f"- {text}"])) > budget:
            break
        lines.append(f"- {text}")
    return lines
