"""Background folding of messages that left the context window into a conversation's rolling summary.

Summaries run at a lower priority than replies: a fold starts only when its
model's queue has a free slot and nobody waiting, and it is cancelled (leaving
the previous summary) as soon as a reply needs that slot. With a batching
backend a fold simply takes one of the batch's free slots.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from engine.backends.base import Sampling
from engine.cards.macros import apply_macros
from engine.cleaning import StreamCleaner
from engine.prompts import Message, clip
from engine.scheduler import ModelQueue, Stats
from engine.settings import Memory
from engine.store.repository import Store

if TYPE_CHECKING:
    from engine.engine import Model

log = logging.getLogger(__name__)

ROOM_POLL_S = 0.05          # how often a waiting fold looks for a free slot (a generation takes seconds)
MESSAGE_SHARE = 2           # one message may take at most 1/MESSAGE_SHARE of the fold's room

LABELS = {
    "en": {"summary": "Summary so far", "none": "(nothing yet)", "new": "New messages",
           "write": "Write the updated summary.", "assistant": "Assistant"},
    "ko": {"summary": "지금까지의 요약", "none": "(아직 없음)", "new": "새 메시지",
           "write": "갱신된 요약을 쓰세요.", "assistant": "어시스턴트"},
}


class Preempted(Exception):
    """A reply needed the slot the fold was using."""


def language_of(texts: list[str]) -> str:
    """"ko" when Hangul makes up a fair share of the letters, else "en"."""
    hangul = letters = 0
    for text in texts:
        for ch in text:
            if "\uac00" <= ch <= "\ud7a3" or "\u3131" <= ch <= "\u318e":
                hangul += 1
                letters += 1
            elif ch.isalpha():
                letters += 1
    return "ko" if letters and hangul / letters >= 0.3 else "en"


def covered_until(summary: dict | None) -> int | None:
    """The ``ts`` of the newest message a summary revision covers (None: nothing is covered)."""
    return summary["covers"]["to_ts"] if summary and summary.get("covers") else None


@dataclass
class FoldRequest:
    """Messages out of the window (oldest first, all after the summary's cover) to fold into the summary."""

    conv_id: str
    writer: "Model"           # the model that writes the summary
    docs: list[dict]
    budget: int               # the summary's token budget in the prompt that uses it
    user: str
    char: str | None = None   # the roleplay character; None in a chat


@dataclass
class _Running:
    queue: ModelQueue
    cancel: threading.Event = field(default_factory=threading.Event)
    preempted: bool = False


class Summarizer:
    """One background job per conversation at most; ``yield_to`` makes room for a reply."""

    def __init__(self, cfg: Memory, store: Store):
        self.cfg, self.store = cfg, store
        self._jobs: dict[str, asyncio.Task] = {}
        self._running: dict[str, _Running] = {}
        self.counts: Counter = Counter()     # written | failed | preempted | stale, for tests and /metrics

    def schedule(self, req: FoldRequest) -> bool:
        """Start folding unless this conversation already has a job; whether one was started."""
        if req.conv_id in self._jobs:
            return False
        task = asyncio.create_task(self._job(req), name=f"summary-{req.conv_id}")
        self._jobs[req.conv_id] = task
        task.add_done_callback(lambda _: self._jobs.pop(req.conv_id, None))
        return True

    def yield_to(self, queue: ModelQueue) -> int:
        """A reply is about to enter ``queue``: cancel the folds holding a slot it would wait for."""
        if queue.has_room:
            return 0
        hit = [r for r in self._running.values() if r.queue is queue and not r.cancel.is_set()]
        for r in hit:
            r.preempted = True
            r.cancel.set()
        return len(hit)

    def cancel(self, conv_id: str) -> None:
        """Stop the conversation's job (e.g. its memory was just cleared or edited)."""
        task = self._jobs.get(conv_id)
        running = self._running.get(conv_id)
        if running:
            running.cancel.set()
        if task:
            task.cancel()

    async def settle(self, timeout_s: float = 300.0) -> None:
        """Wait for the jobs in progress (tests and benchmarks)."""
        if self._jobs:
            await asyncio.wait(list(self._jobs.values()), timeout=timeout_s)

    async def close(self) -> None:
        for conv_id in list(self._jobs):
            self.cancel(conv_id)
        await self.settle(timeout_s=10.0)

    # one job ------------------------------------------------------------------------------------

    async def _job(self, req: FoldRequest) -> None:
        try:
            for _ in range(self.cfg.max_folds):
                prev = await self.store.latest_summary(req.conv_id)
                after = covered_until(prev)
                docs = [d for d in req.docs if after is None or d["ts"] > after]
                if not docs or not await self._fold(req, prev, docs):
                    return
        except asyncio.CancelledError:
            raise
        except Preempted:
            self.counts["preempted"] += 1
            log.info("summary of %s postponed: a reply needed the model", req.conv_id)
        except Exception as e:  # noqa: BLE001 - a failed summary leaves the previous one; replies go on
            self.counts["failed"] += 1
            log.warning("summary of %s not updated: %s: %s", req.conv_id, type(e).__name__, e)

    def _messages(self, req: FoldRequest, lang: str, prev_text: str, docs: list[dict]) -> list[Message]:
        labels = LABELS[lang]
        prompt = (self.cfg.roleplay_prompt if req.char else self.cfg.prompt).model_dump()[lang]
        names = {"user": req.user, "assistant": req.char or labels["assistant"]}
        transcript = "\n".join(f"{names.get(d['role'], d['role'])}: {d['content']}" for d in docs)
        body = (f"{labels['summary']}:\n{prev_text or labels['none']}\n\n{labels['new']}:\n{transcript}\n\n"
                f"{labels['write']}")
        return [{"role": "system", "content": apply_macros(prompt, req.char or "", req.user)},
                {"role": "user", "content": body}]

    def _chunk(self, req: FoldRequest, lang: str, prev_text: str, docs: list[dict]) -> tuple[list[dict], str]:
        """The oldest messages whose fold prompt fits the writer's context, and that prompt."""
        backend = req.writer.backend
        room = backend.n_ctx - req.budget
        one = max(room // MESSAGE_SHARE, 16)
        docs = [d | {"content": clip(d["content"], backend.count_tokens, one)} for d in docs]
        taken: list[dict] = []
        prompt = ""
        for d in docs:
            candidate = backend.render(self._messages(req, lang, prev_text, [*taken, d]))
            if backend.count_tokens(candidate) > room:
                break
            taken, prompt = [*taken, d], candidate
        return taken, prompt

    async def _fold(self, req: FoldRequest, prev: dict | None, docs: list[dict]) -> bool:
        """Fold the oldest of ``docs`` into a new revision; whether one was written."""
        prev_text = clip(prev["text"], req.writer.backend.count_tokens, req.budget) if prev else ""
        lang = language_of([prev_text, *(d["content"] for d in docs)])
        chunk, prompt = self._chunk(req, lang, prev_text, docs)
        if not chunk:
            raise ValueError("not even one message fits the summariser's context")
        text = await self._generate(req, prompt)
        if not text:
            raise ValueError("the summariser wrote nothing")
        covers = dict(prev["covers"]) if prev and prev.get("covers") else {
            "from_id": chunk[0]["_id"], "from_ts": chunk[0]["ts"], "messages": 0}
        covers.update(to_id=chunk[-1]["_id"], to_ts=chunk[-1]["ts"], messages=covers["messages"] + len(chunk))
        rev = prev["rev"] + 1 if prev else 1
        written = await self.store.add_summary(req.conv_id, rev, text, covers, by="model",
                                               folded_ids=[d["_id"] for d in chunk])
        self.counts["written" if written else "stale"] += 1
        return written

    async def _wait_for_room(self, queue: ModelQueue, deadline: float) -> None:
        """Until a slot has been free for ``memory.idle_s``: a reply never waits behind a fold, and a fold
        does not start (and waste a prefill that cannot be interrupted) while a user is still writing."""
        # ModelQueue has no priority lane, so this looks at it rather than waiting on it.
        free_since = None
        while True:
            now = time.monotonic()
            if not queue.has_room:
                free_since = None
            elif free_since is None:
                free_since = now
            if free_since is not None and now - free_since >= self.cfg.idle_s:
                return
            if now > deadline:
                raise Preempted("the model stayed busy")
            await asyncio.sleep(ROOM_POLL_S)

    async def _generate(self, req: FoldRequest, prompt: str) -> str:
        cfg, model = self.cfg, req.writer
        # Waiting for a free slot and writing are bounded apart: a long wait must not eat the writing time.
        await self._wait_for_room(model.queue, time.monotonic() + cfg.timeout_s)
        stop = tuple(s for s in model.cfg.stop if "{{" not in s)
        sampling = Sampling(max_new_tokens=req.budget, temperature=cfg.temperature, top_p=0.9, top_k=40,
                            repetition_penalty=1.1, stop=stop, seed=model.cfg.seed)
        running = self._running[req.conv_id] = _Running(model.queue)
        cleaner = StreamCleaner(model.cfg.clean, stop)
        text = ""
        try:
            async with asyncio.timeout(cfg.timeout_s):
                async for raw in model.queue.stream(prompt, sampling, running.cancel, Stats()):
                    text += cleaner.feed(raw)
                    if model.queue.waiting:       # a reply queued behind this fold: give the slot back
                        running.preempted = True
                        running.cancel.set()
                    if cleaner.stopped:
                        running.cancel.set()
        finally:
            self._running.pop(req.conv_id, None)
        if running.preempted:
            raise Preempted("a reply needed the model")
        return (text + cleaner.finish()).strip()
