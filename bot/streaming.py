"""The one streaming-sink interface every surface implements, with shared pacing, splitting and 429 handling."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Callable, Protocol

log = logging.getLogger(__name__)


class RateLimited(Exception):
    """A platform said 429: try the same call again after ``retry_after`` seconds."""

    def __init__(self, retry_after: float):
        super().__init__(f"rate limited for {retry_after:.2f}s")
        self.retry_after = max(0.0, float(retry_after))


class ReplySink(Protocol):
    """Where one reply is shown while it is written.

    ``update`` and ``finish`` get the whole text so far (it only grows); the
    sink decides what to send. ``fail`` shows a short user-facing message.
    """

    async def open(self) -> None: ...
    async def update(self, text: str) -> None: ...
    async def finish(self, text: str) -> None: ...
    async def fail(self, message: str) -> None: ...


class Transport(Protocol):
    """A platform's message primitives, as used by EditSink."""

    limit: int

    async def send(self, text: str) -> Any: ...
    async def edit(self, handle: Any, text: str) -> None: ...


def split_text(text: str, limit: int) -> list[str]:
    """Cut text into pages of at most ``limit`` characters whose concatenation is ``text``.

    A page ends after the last newline in its window, else after the last space,
    else at the limit; the separator stays on the earlier page so nothing is lost.
    """
    if limit <= 0:
        raise ValueError("limit must be positive")
    pages: list[str] = []
    while len(text) > limit:
        window = text[:limit]
        cut = window.rfind("\n") + 1 or window.rfind(" ") + 1
        if cut < limit // 2:           # a boundary too early wastes a whole message
            cut = window.rfind(" ") + 1 if window.rfind(" ") + 1 >= limit // 2 else limit
        pages.append(text[:cut])
        text = text[cut:]
    pages.append(text)
    return pages


async def retrying(call: Callable[[], Any], *, attempts: int = 8, max_wait: float = 60.0) -> Any:
    """Run a platform call, waiting out 429s; the call is repeated as-is so no text is dropped."""
    for attempt in range(attempts):
        try:
            return await call()
        except RateLimited as e:
            if attempt == attempts - 1:
                raise
            wait = min(e.retry_after, max_wait)
            log.info("rate limited; waiting %.2fs", wait)
            await asyncio.sleep(wait)
    raise AssertionError("unreachable")


class EditSink:
    """Streams by sending a message and editing it in place, continuing on new messages past ``limit``.

    The last page shows ``indicator`` while writing; the final edit removes it.
    Edits that would change nothing are never sent. What is shown at the end,
    joined, equals the final text exactly.
    """

    def __init__(self, transport: Transport, indicator: str = " ▌", placeholder: str = "…"):
        self.transport = transport
        self.indicator = indicator
        self.placeholder = placeholder
        self.handles: list[Any] = []
        self.shown: list[str] = []

    async def open(self) -> None:
        """Surfaces that must acknowledge at once (Discord's 3 s) override this."""

    async def _show(self, pages: list[str], final: bool) -> None:
        for i, page in enumerate(pages):
            last = i == len(pages) - 1
            body = page if (final or not last) else page + self.indicator
            body = body if body.strip() else self.placeholder
            if i < len(self.handles):
                if self.shown[i] != body:
                    await retrying(lambda h=self.handles[i], b=body: self.transport.edit(h, b))
                    self.shown[i] = body
            else:
                handle = await retrying(lambda b=body: self.transport.send(b))
                self.handles.append(handle)
                self.shown.append(body)

    def _pages(self, text: str) -> list[str]:
        # The same cut while streaming and at the end, so a page never moves between messages.
        return split_text(text, self.transport.limit - len(self.indicator))

    async def update(self, text: str) -> None:
        await self._show(self._pages(text), final=False)

    async def finish(self, text: str) -> None:
        await self._show(self._pages(text), final=True)

    async def fail(self, message: str) -> None:
        if self.handles:
            await retrying(lambda: self.transport.send(message))
        else:
            await self._show([message], final=True)


async def deliver(
    pieces: AsyncIterator[str],
    sink: ReplySink,
    *,
    interval: float,
    describe_error: Callable[[Exception], str | None],
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Pump an engine reply into a sink, updating at most once per ``interval`` seconds.

    Returns the full text. An engine error is shown through ``sink.fail`` with
    the message ``describe_error`` gives (None: re-raise).
    """
    await sink.open()
    text, last = "", 0.0
    try:
        async for piece in pieces:
            text += piece
            now = clock()
            if text.strip() and now - last >= interval:
                await sink.update(text)
                last = clock()
    except Exception as e:  # noqa: BLE001 - translated for the user, logged, never swallowed silently
        message = describe_error(e)
        if message is None:
            raise
        log.info("reply ended with %s: %s", type(e).__name__, e)
        if text.strip():
            await sink.finish(text)
        await sink.fail(message)
        return text
    await sink.finish(text)
    return text
