"""Per-model request queue: bounded concurrency, a queue limit, and generation in worker threads."""
from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from engine.backends.base import Finish, Sampling, TextGenerator
from engine.errors import EngineBusy, GenerationTimeout, ModelError

_DONE = object()


@dataclass
class Stats:
    """What one generation measured, for metrics and benchmarks."""

    ttft_s: float | None = None
    gen_s: float = 0.0
    finish: Finish | None = None


class ModelQueue:
    """One model's gate: at most ``concurrency`` generations, at most ``queue_limit`` waiting."""

    def __init__(self, name: str, backend: TextGenerator, concurrency: int, queue_limit: int, timeout_s: float):
        # A batching backend takes as many generations at once as its batch holds.
        concurrency = max(concurrency, getattr(backend, "max_concurrent", 1))
        self.name = name
        self.backend = backend
        self.queue_limit = queue_limit
        self.timeout_s = timeout_s
        self._slots = asyncio.Semaphore(concurrency)
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix=f"gen-{name}")
        self.waiting = 0
        self.running = 0

    @property
    def depth(self) -> int:
        return self.waiting + self.running

    @property
    def has_room(self) -> bool:
        """A new generation would start at once (nobody waiting, a slot free)."""
        return self.waiting == 0 and not self._slots.locked()

    async def stream(self, prompt: str, sampling: Sampling, cancel: threading.Event, stats: Stats,
                     generate: Callable[..., Finish] | None = None, reserved: int = 0,
                     max_wait_s: float | None = None) -> AsyncIterator[str]:
        """Yield raw text pieces; a consumer that stops early (or is cancelled) stops the model.

        ``generate`` replaces the backend's own (e.g. beam search) while taking the same slot;
        ``reserved``: this request may not take the last so many places of the queue; ``max_wait_s``: it
        gets EngineBusy if no slot frees within so many seconds (an answer in time, not a hung client).
        """
        generate = generate or self.backend.generate
        if self.waiting >= self.queue_limit - reserved and self._slots.locked():
            raise EngineBusy(f"{self.name} queue full ({self.waiting} waiting)")
        self.waiting += 1
        try:
            async with asyncio.timeout(max_wait_s):
                await self._slots.acquire()
        except TimeoutError:
            raise EngineBusy(f"{self.name}: no free slot within {max_wait_s}s") from None
        finally:
            self.waiting -= 1
        self.running += 1
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        # Pieces the loop has not taken yet are joined: one wake-up of the event loop carries them all, so a
        # busy loop (8 streams on 2 cores) does less work per token instead of falling behind the model.
        unsent: list[str] = []
        lock = threading.Lock()

        def flush() -> None:
            with lock:
                text = "".join(unsent)
                unsent.clear()
            pieces.put_nowait(text)

        def emit(text: str) -> None:
            with lock:
                unsent.append(text)
                if len(unsent) > 1:
                    return            # a flush is already on its way
            loop.call_soon_threadsafe(flush)

        def work() -> Finish:
            try:
                return generate(prompt, sampling, cancel, emit)
            finally:
                loop.call_soon_threadsafe(pieces.put_nowait, _DONE)

        start = time.perf_counter()
        future = loop.run_in_executor(self._pool, work)
        deadline = start + self.timeout_s
        try:
            while True:
                remaining = deadline - time.perf_counter()
                try:
                    item = await asyncio.wait_for(pieces.get(), timeout=max(remaining, 0.001))
                except asyncio.TimeoutError:
                    raise GenerationTimeout(f"{self.name}: no end after {self.timeout_s}s") from None
                if item is _DONE:
                    break
                if stats.ttft_s is None:
                    stats.ttft_s = time.perf_counter() - start
                yield item
            try:
                stats.finish = await future
            except Exception as e:  # noqa: BLE001 - any backend failure is a model error for the user
                raise ModelError(f"{self.name}: {type(e).__name__}: {e}") from e
        finally:
            cancel.set()
            stats.gen_s = time.perf_counter() - start

            def release(done: asyncio.Future | None = None) -> None:
                if done is not None and not done.cancelled():
                    done.exception()   # retrieved: it was already reported, or nobody is listening
                self.running -= 1
                self._slots.release()

            # The thread sees ``cancel`` within one token; the slot frees only when it has.
            if future.done():
                release()
            else:
                future.add_done_callback(release)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
