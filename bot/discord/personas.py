"""Characters speaking through one webhook per channel, wearing their card image as the webhook's avatar."""
from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

import discord

from engine.cards.image import placeholder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Persona:
    name: str
    image: bytes | None


class Personas:
    """Finds or creates the bot's webhook in a channel (threads use their parent's) and dresses it.

    Discord's per-message ``avatar_url`` needs a public URL, and attachment URLs
    expire (they are signed), so a card image cannot be pointed at reliably.
    Instead the webhook's own avatar is set to the speaking character's image
    (``Webhook.edit(avatar=bytes)``) just before its message is created: a
    webhook message keeps the avatar it was created with, and later edits of
    the text do not touch the author. A per-webhook lock covers "set avatar +
    create message", so characters replying at once in one channel do not
    swap faces. The avatar is only changed when another character spoke last.

    A failed avatar change (404, 403, Discord's 429 on frequent webhook edits,
    5xx, or no answer within ``avatar_timeout_s``) never costs the reply: the
    character still speaks with its name and the webhook's old avatar.
    """

    def __init__(self, hook_name: str, avatar_timeout_s: float = 5.0, avatar_retry_s: float = 60.0):
        self.hook_name = hook_name
        self.avatar_timeout_s = avatar_timeout_s
        self.avatar_retry_s = avatar_retry_s        # after a failed change, the old avatar is kept this long
        self._failed: dict[int, float] = {}
        self._hooks: dict[int, discord.Webhook] = {}
        self._locks: dict[int, asyncio.Lock] = {}
        self._wearing: dict[int, str] = {}
        self._denied: set[int] = set()
        self.avatar_changes = 0
        self.avatar_failures = 0

    def denied(self, channel_id: int) -> bool:
        return channel_id in self._denied

    async def webhook_for(self, channel: Any) -> discord.Webhook | None:
        """The channel's webhook, or None where the bot lacks Manage Webhooks (remembered)."""
        home = channel.parent if isinstance(channel, discord.Thread) else channel
        if home is None or not hasattr(home, "webhooks"):
            return None
        if home.id in self._denied:
            return None
        hook = self._hooks.get(home.id)
        if hook is not None:
            return hook
        try:
            me = home.guild.me
            found = [h for h in await home.webhooks()
                     if h.token and h.name == self.hook_name and (h.user is None or me is None or h.user.id == me.id)]
            hook = found[0] if found else await home.create_webhook(name=self.hook_name, reason="character replies")
        except discord.Forbidden:
            log.info("no Manage Webhooks in channel %s: characters reply as embeds there", home.id)
            self._denied.add(home.id)
            return None
        self._hooks[home.id] = hook
        return hook

    def forget(self, channel_id: int, denied: bool = False) -> None:
        hook = self._hooks.pop(channel_id, None)
        if hook is not None:
            self._wearing.pop(hook.id, None)
        if denied:
            self._denied.add(channel_id)

    @contextlib.asynccontextmanager
    async def wear(self, hook: discord.Webhook, persona: Persona) -> AsyncIterator[Persona]:
        lock = self._locks.setdefault(hook.id, asyncio.Lock())
        async with lock:
            recent = time.monotonic() - self._failed.get(hook.id, -1e9) < self.avatar_retry_s
            if self._wearing.get(hook.id) != persona.name and not recent:
                await self._dress(hook, persona)
            yield persona

    async def _dress(self, hook: discord.Webhook, persona: Persona) -> None:
        image = persona.image or placeholder(persona.name)
        try:
            await asyncio.wait_for(hook.edit(avatar=image, reason=f"{persona.name} speaks"), self.avatar_timeout_s)
        except (discord.HTTPException, asyncio.TimeoutError) as e:
            # Not remembered as worn: the next reply tries again. Logged once per failed change.
            self.avatar_failures += 1
            log.warning("avatar change of webhook %s for %s failed (%s); speaking with the old avatar",
                        hook.id, persona.name, getattr(e, "status", None) or type(e).__name__)
            self._wearing.pop(hook.id, None)
            self._failed[hook.id] = time.monotonic()
            return
        self._failed.pop(hook.id, None)
        self._wearing[hook.id] = persona.name
        self.avatar_changes += 1
