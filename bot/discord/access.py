"""Who may use the bot where, and who is an admin, from bot.yaml's discord.permissions."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from bot.discord.config import DiscordPermissions


@dataclass(frozen=True)
class Who:
    """The ids that decide access: the user, their roles here, and the channel (with its parent for threads)."""

    user_id: int
    role_ids: frozenset[int] = frozenset()
    channel_ids: frozenset[int] = frozenset()


def who(user, channel) -> Who:
    """A Who from discord.py objects (a Member has roles; a User in a DM has none)."""
    roles = frozenset(r.id for r in getattr(user, "roles", ()) or ())
    channels = {channel.id} if channel is not None else set()
    parent = getattr(channel, "parent_id", None)
    if parent:
        channels.add(parent)
    return Who(user.id, roles, frozenset(channels))


def _any(ids: Iterable[int], wanted: tuple[int, ...]) -> bool:
    return any(i in wanted for i in ids)


class Access:
    """Blocks win over allows; an empty allow list allows everyone; admins are always allowed."""

    def __init__(self, cfg: DiscordPermissions):
        self.cfg = cfg

    def is_admin(self, w: Who) -> bool:
        return w.user_id in self.cfg.admin_user_ids or _any(w.role_ids, self.cfg.admin_role_ids)

    def allowed(self, w: Who) -> bool:
        c = self.cfg
        if self.is_admin(w):
            return True
        if w.user_id in c.blocked_user_ids or _any(w.role_ids, c.blocked_role_ids) \
                or _any(w.channel_ids, c.blocked_channel_ids):
            return False
        if c.allowed_channel_ids and not _any(w.channel_ids, c.allowed_channel_ids):
            return False
        if c.allowed_user_ids or c.allowed_role_ids:
            return w.user_id in c.allowed_user_ids or _any(w.role_ids, c.allowed_role_ids)
        return True
