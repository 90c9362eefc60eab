"""The one streaming-sink interface every surface implements, with shared pacing, splitting and 429 handling."""
from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Callable, Protocol, Sequence

log = logging.getLogger(__name__)


class RateLimited(Exception):
    """A platform said 429: try the same call again after ``retry_after`` seconds."""

    def __init__(self, retry_after: float):
        super().__init__(f"rate limited for {retry_after:.2f}s")
        self.retry_after = max(0.0, float(retry_after))


class MessageGone(Exception):
    """The message being edited no longer exists (deleted by someone): the page continues in a new message."""


class PathClosed(Exception):
    """This way of sending is refused (403, blocked, a server error after its retries): try the next-best one."""


class Undeliverable(Exception):
    """Every way of sending a reply was refused; the text stays stored by the engine."""


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

    When a platform refuses (``PathClosed``), the text not yet fully shown
    continues on the next of ``fallbacks`` (e.g. webhook → embed → channel →
    DM); a page whose message was deleted (``MessageGone``) is sent again as a
    new message. Each failure is logged once; when every path is refused the
    sink raises ``Undeliverable``.
    """

    def __init__(self, transport: Transport, indicator: str = " ▌", placeholder: str = "…",
                 fallbacks: Sequence[Transport] = ()):
        self.transport = transport
        self.fallbacks = list(fallbacks)
        self.indicator = indicator
        self.placeholder = placeholder
        self.handles: list[Any] = []
        self.shown: list[str] = []
        self.base = 0                   # characters shown, complete, through paths given up on
        self._complete = False

    async def open(self) -> None:
        """Surfaces that must acknowledge at once (Discord's 3 s) override this."""

    def _next_path(self, why: Exception, done_chars: int) -> None:
        if not self.fallbacks:
            log.warning("reply not delivered: %s refused it (%s); no other way left", type(self.transport).__name__,
                        why)
            raise Undeliverable(str(why)) from why
        nxt = self.fallbacks.pop(0)
        log.warning("%s refused the reply (%s); continuing through %s", type(self.transport).__name__, why,
                    type(nxt).__name__)
        self.transport, self.base = nxt, self.base + done_chars
        self.handles, self.shown = [], []

    async def _show_once(self, pages: list[str], final: bool) -> None:
        for i, page in enumerate(pages):
            last = i == len(pages) - 1
            body = page if (final or not last) else page + self.indicator
            body = body if body.strip() else self.placeholder
            try:
                if i < len(self.handles):
                    if self.shown[i] != body:
                        try:
                            await retrying(lambda h=self.handles[i], b=body: self.transport.edit(h, b))
                        except MessageGone as e:
                            log.warning("a message of the reply was deleted (%s); the page continues in a new one", e)
                            self.handles[i] = await retrying(lambda b=body: self.transport.send(b))
                        self.shown[i] = body
                else:
                    handle = await retrying(lambda b=body: self.transport.send(b))
                    self.handles.append(handle)
                    self.shown.append(body)
            except (PathClosed, MessageGone) as e:     # MessageGone here: what a send answers to is gone
                self._next_path(e, sum(len(p) for p in pages[:i]))
                return
        self._complete = True

    async def _show(self, text: str, final: bool) -> None:
        for _ in range(len(self.fallbacks) + 1):
            self._complete = False
            await self._show_once(self._pages(text[self.base:]), final)
            if self._complete:
                return

    def _pages(self, text: str) -> list[str]:
        # The same cut while streaming and at the end, so a page never moves between messages.
        return split_text(text, self.transport.limit - len(self.indicator))

    async def update(self, text: str) -> None:
        await self._show(text, final=False)

    async def finish(self, text: str) -> None:
        await self._show(text, final=True)

    async def fail(self, message: str) -> None:
        if self.handles:
            for _ in range(len(self.fallbacks) + 1):
                try:
                    await retrying(lambda: self.transport.send(message))
                    return
                except (PathClosed, MessageGone) as e:
                    self._next_path(e, 0)
        else:
            await self._show_message(message)

    async def _show_message(self, message: str) -> None:
        base, self.base = self.base, 0
        try:
            await self._show(message, final=True)
        finally:
            self.base = base


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
