"""Spacing of outgoing Telegram messages: a least gap per chat and an overall rate, so 429s stay rare."""
from __future__ import annotations

import asyncio
import time
from typing import Callable


class Pacer:
    """Hands out send slots: one chat's calls ``gap(chat_id)`` apart, all calls ``1/per_second`` apart.

    Slots are reserved at once, so concurrent callers queue in order instead
    of all waking together. Only message-producing calls (send, edit, photo)
    go through it; drafts and chat actions are not messages.
    """

    def __init__(self, gap: Callable[[int], float], per_second: float, clock: Callable[[], float] = time.monotonic):
        self.gap = gap
        self.global_gap = 1.0 / per_second
        self.clock = clock
        self._next_chat: dict[int, float] = {}
        self._next_any = 0.0

    def reserve(self, chat_id: int) -> float:
        """Seconds to wait before the next call to ``chat_id``; the slot is taken."""
        now = self.clock()
        slot = max(now, self._next_chat.get(chat_id, 0.0), self._next_any)
        self._next_chat[chat_id] = slot + self.gap(chat_id)
        self._next_any = slot + self.global_gap
        if len(self._next_chat) > 4096:       # forget chats whose slots have passed
            self._next_chat = {c: t for c, t in self._next_chat.items() if t > now}
        return slot - now

    def delay(self, chat_id: int, seconds: float) -> None:
        """The platform asked this chat to wait (429): later slots start after it."""
        self._next_chat[chat_id] = max(self._next_chat.get(chat_id, 0.0), self.clock() + seconds)

    async def wait(self, chat_id: int) -> None:
        pause = self.reserve(chat_id)
        if pause > 0:
            await asyncio.sleep(pause)


def telegram_pacer(edit_interval_s: float, group_messages_per_minute: int, messages_per_second: int) -> Pacer:
    """Telegram's limits: private chats ``edit_interval_s`` apart, groups within their per-minute budget.

    Private chats have positive ids, groups and channels negative ones.
    """
    per_group = 60.0 / group_messages_per_minute
    return Pacer(lambda chat_id: edit_interval_s if chat_id > 0 else max(edit_interval_s, per_group),
                 messages_per_second)
