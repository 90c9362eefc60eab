"""Discord message primitives for bot.streaming.EditSink: interaction responses, channel messages, webhooks."""
from __future__ import annotations

import asyncio
import collections
import io
import logging
import time
from dataclasses import dataclass, field
from typing import Any, AsyncContextManager, Awaitable, Callable

import discord

from bot.streaming import MessageGone, PathClosed, RateLimited

log = logging.getLogger(__name__)

MESSAGE_LIMIT = 2000
EMBED_LIMIT = 4096


@dataclass
class Counters:
    """What the adapter sent, for logs, tests and the benchmark."""

    sends: int = 0
    edits: int = 0
    rate_limited: int = 0          # 429 answers seen on the wire (discord.py waits them out itself)
    paced_waits: int = 0           # times the adapter waited on its own per-channel budget


class ChannelPacer:
    """At most ``count`` writes per ``window`` seconds per channel, shared by every reply in it.

    discord.py only learns a bucket's limit from response headers, and interaction
    tokens are separate buckets; several replies in one channel would still trip
    the channel's limit, so the adapter spaces its own writes.
    """

    def __init__(self, count: int, window: float, counters: Counters, clock: Callable[[], float] = time.monotonic):
        # Discord's window starts when a request arrives there, later than it leaves here; the margin
        # keeps a request sent "just after" our window from landing "just before" the server's ends.
        self.count, self.counters, self.clock = count, counters, clock
        self.window = window + min(1.0, 0.1 * window + 0.25)
        self._times: dict[int, collections.deque] = {}
        self._locks: dict[int, asyncio.Lock] = {}

    async def wait(self, channel_id: int) -> None:
        lock = self._locks.setdefault(channel_id, asyncio.Lock())
        async with lock:
            times = self._times.setdefault(channel_id, collections.deque())
            while True:
                now = self.clock()
                while times and now - times[0] >= self.window:
                    times.popleft()
                if len(times) < self.count:
                    break
                self.counters.paced_waits += 1
                await asyncio.sleep(self.window - (now - times[0]) + 0.01)
            times.append(self.clock())


def retry_after_of(e: discord.HTTPException) -> float:
    headers = getattr(e.response, "headers", None) or {}
    try:
        return float(headers.get("Retry-After") or headers.get("X-RateLimit-Reset-After") or 1.0)
    except ValueError:
        return 1.0


UNKNOWN_MESSAGE = 10008


async def platform_call(fn: Callable[[], Awaitable[Any]]) -> Any:
    """A discord.py call with its failures in EditSink's terms.

    429 (after discord.py's own retries) → RateLimited, repeated as-is; a deleted
    message (404 Unknown Message) → MessageGone, sent again; any other 404
    (webhook, channel, interaction gone), a 403 or a 5xx that discord.py's own
    retries did not get past → PathClosed, the next-best way.
    """
    try:
        return await fn()
    except discord.RateLimited as e:
        raise RateLimited(e.retry_after) from None
    except discord.NotFound as e:
        if e.code == UNKNOWN_MESSAGE:
            raise MessageGone(f"{e.status} {e.text}") from e
        raise PathClosed(f"{e.status} {e.text}") from e
    except (discord.Forbidden, discord.DiscordServerError) as e:
        raise PathClosed(f"{e.status} {e.text}") from e
    except discord.HTTPException as e:
        if e.status == 429:
            raise RateLimited(retry_after_of(e)) from None
        raise


# --- how a reply looks: plain text, or an embed carrying a character -------------------------


class Plain:
    """Text as the message content."""

    limit = MESSAGE_LIMIT

    def new(self, text: str) -> dict:
        return {"content": text}

    def edit(self, text: str) -> dict:
        return {"content": text}

    def learn(self, message: Any) -> None:
        pass


@dataclass
class CharacterEmbed:
    """Text in an embed with the character's name and thumbnail (when webhooks are not allowed).

    The card image is uploaded with the first message and referenced as
    ``attachment://``; Discord answers with its CDN URL, which later messages reuse.
    """

    name: str
    image: bytes | None
    thumbnail_url: str | None = None
    limit: int = EMBED_LIMIT

    def _embed(self, text: str) -> discord.Embed:
        embed = discord.Embed(description=text)
        embed.set_author(name=self.name)
        if self.thumbnail_url:
            embed.set_thumbnail(url=self.thumbnail_url)
        elif self.image:
            embed.set_thumbnail(url="attachment://avatar.png")
        return embed

    def new(self, text: str) -> dict:
        kw: dict = {"embed": self._embed(text)}
        if self.image and not self.thumbnail_url:
            kw["file"] = discord.File(io.BytesIO(self.image), filename="avatar.png")
        return kw

    def edit(self, text: str) -> dict:
        return {"embed": self._embed(text)}

    def learn(self, message: Any) -> None:
        embeds = getattr(message, "embeds", None) or []
        if not self.thumbnail_url and embeds and embeds[0].thumbnail and embeds[0].thumbnail.url:
            url = embeds[0].thumbnail.url
            if not url.startswith("attachment://"):
                self.thumbnail_url = url


def _as_attachments(kw: dict) -> dict:
    """Edits take ``attachments=[...]`` where sends take ``file=``."""
    kw = dict(kw)
    if "file" in kw:
        kw["attachments"] = [kw.pop("file")]
    return kw


# --- transports --------------------------------------------------------------------------------


@dataclass
class Handle:
    """One message of a reply; ``kind`` says which API edits it (it may move to a channel message)."""

    kind: str          # original | followup | channel | webhook
    message: Any


@dataclass
class _Base:
    channel_id: int
    pacer: ChannelPacer
    counters: Counters
    look: Any = field(default_factory=Plain)
    on_message: Callable[["Handle"], Awaitable[None]] | None = None   # link it to the conversation, journal it

    @property
    def limit(self) -> int:
        return self.look.limit

    async def _sent(self, handle: Handle) -> Handle:
        self.counters.sends += 1
        self.look.learn(handle.message)
        if self.on_message is not None and getattr(handle.message, "id", None):
            await self.on_message(handle)
        return handle


@dataclass
class ChannelTransport(_Base):
    """The bot's own messages in a channel; the first one can reply to the user's message."""

    channel: Any = None
    reply_to: Any = None

    async def send(self, text: str) -> Handle:
        await self.pacer.wait(self.channel_id)
        kw = self.look.new(text)
        if self.reply_to is not None:
            ref, self.reply_to = self.reply_to, None
            message = await platform_call(lambda: self.channel.send(
                **kw, reference=ref.to_reference(fail_if_not_exists=False),
                mention_author=False))
        else:
            message = await platform_call(lambda: self.channel.send(**kw))
        return await self._sent(Handle("channel", message))

    async def edit(self, handle: Handle, text: str) -> None:
        await self.pacer.wait(self.channel_id)
        handle.message = await platform_call(lambda: handle.message.edit(**self.look.edit(text)))
        self.counters.edits += 1


@dataclass
class DirectTransport(ChannelTransport):
    """The user's DMs: the last way to reach someone when the channel refuses the bot."""

    user: Any = None

    async def send(self, text: str) -> Handle:
        if self.channel is None:
            try:
                self.channel = await platform_call(self.user.create_dm)
            except MessageGone as e:
                raise PathClosed(str(e)) from e
        return await super().send(text)


@dataclass
class InteractionTransport(_Base):
    """The deferred interaction response, then follow-ups; channel messages once the token nears its end."""

    interaction: Any = None
    deadline: float = 0.0              # time.monotonic() past which the token is treated as dead
    continued_note: str = "↪"
    clock: Callable[[], float] = time.monotonic
    fallback: ChannelTransport | None = None
    _original_used: bool = False

    def _alive(self) -> bool:
        return self.clock() < self.deadline

    def _channel(self) -> ChannelTransport:
        if self.fallback is None:
            self.fallback = ChannelTransport(self.channel_id, self.pacer, self.counters, self.look, self.on_message,
                                             channel=self.interaction.channel)
        return self.fallback

    async def send(self, text: str) -> Handle:
        if not self._alive():
            if not self._original_used:       # the "thinking…" response would otherwise spin forever
                self._original_used = True
                await self._mark(Handle("original", None))
            return await self._channel().send(text)
        await self.pacer.wait(self.channel_id)
        if not self._original_used:
            self._original_used = True
            kw = _as_attachments(self.look.new(text))
            message = await platform_call(lambda: self.interaction.edit_original_response(**kw))
            return await self._sent(Handle("original", message))
        kw = self.look.new(text)
        message = await platform_call(lambda: self.interaction.followup.send(**kw, wait=True))
        return await self._sent(Handle("followup", message))

    async def edit(self, handle: Handle, text: str) -> None:
        if handle.kind == "channel":
            await self._channel().edit(handle, text)
            return
        if not self._alive():
            # The token is (nearly) dead: this page moves to a channel message with all its text,
            # and the old message says where it went, so nothing is shown twice.
            moved = await self._channel().send(text)
            await self._mark(handle)
            handle.kind, handle.message = "channel", moved.message
            return
        await self.pacer.wait(self.channel_id)
        kw = self.look.edit(text)
        if handle.kind == "original":
            handle.message = await platform_call(lambda: self.interaction.edit_original_response(**kw))
        else:
            handle.message = await platform_call(
                lambda: self.interaction.followup.edit_message(handle.message.id, **kw))
        self.counters.edits += 1

    async def _mark(self, handle: Handle) -> None:
        """Best effort: replace a page that moved with a pointer to where it went (the token may be gone)."""
        try:
            if handle.kind == "original":
                await self.interaction.edit_original_response(content=self.continued_note, embed=None,
                                                              attachments=[])
            else:
                await self.interaction.followup.edit_message(handle.message.id, content=self.continued_note,
                                                             embed=None, attachments=[])
        except discord.HTTPException as e:
            log.info("could not mark a page that moved to the channel: %s", e)


@dataclass
class WebhookTransport(_Base):
    """A character speaking through the channel's webhook (its name per message, its card image as avatar)."""

    webhook: Any = None
    thread: Any = None
    wear: Callable[[], AsyncContextManager[Any]] | None = None   # dresses the webhook as the character (a lock)
    on_closed: Callable[[], None] | None = None                  # the webhook refused: find or make it again next time

    def _thread(self) -> dict:
        return {"thread": self.thread} if self.thread is not None else {}

    async def send(self, text: str) -> Handle:
        await self.pacer.wait(self.channel_id)
        try:
            async with self.wear() as persona:
                message = await platform_call(lambda: self.webhook.send(
                    content=text, username=persona.name, wait=True, **self._thread()))
        except PathClosed:
            if self.on_closed is not None:
                self.on_closed()
            raise
        return await self._sent(Handle("webhook", message))

    async def edit(self, handle: Handle, text: str) -> None:
        await self.pacer.wait(self.channel_id)
        handle.message = await platform_call(lambda: self.webhook.edit_message(
            handle.message.id, content=text, **self._thread()))
        self.counters.edits += 1
