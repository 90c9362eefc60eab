"""The `discord:` section of bot.yaml."""
from __future__ import annotations

from pydantic import Field

from engine.settings import Strict


class DiscordPermissions(Strict):
    """Blocks win over allows; an empty allow list allows everyone; admins are never blocked."""

    admin_user_ids: tuple[int, ...] = ()
    admin_role_ids: tuple[int, ...] = ()
    allowed_user_ids: tuple[int, ...] = ()     # empty: everyone not blocked
    blocked_user_ids: tuple[int, ...] = ()
    allowed_role_ids: tuple[int, ...] = ()
    blocked_role_ids: tuple[int, ...] = ()
    allowed_channel_ids: tuple[int, ...] = ()
    blocked_channel_ids: tuple[int, ...] = ()


class DiscordConfig(Strict):
    api_base_url: str = "https://discord.com/api/v10"
    gateway_url: str = "wss://gateway.discord.gg/"
    allow_dms: bool = True
    edit_interval_s: float = Field(1.0, ge=0.05)
    permissions: DiscordPermissions = DiscordPermissions()
    # Slash commands are synced globally at start; listed guilds also get a copy at once
    # (global commands can take a while to appear in a guild the first time).
    sync_commands: bool = True
    sync_guild_ids: tuple[int, ...] = ()
    # The privileged "message content" intent: needed only to answer replies to the bot
    # that do not @mention it. Mentions and DMs carry their text without it.
    message_content_intent: bool = False
    # An interaction token lives 15 min; past this the reply continues in channel messages.
    interaction_token_ttl_s: float = Field(14 * 60, gt=0, le=15 * 60)
    # Edits per channel allowed in `channel_edit_window_s` before the adapter waits on its own.
    channel_edits: int = Field(5, ge=1)
    channel_edit_window_s: float = Field(5.0, gt=0)
    typing: bool = True                         # show "typing…" while a mention's reply is queued
    # A reply cut off by a crash is completed at the next start; one that keeps failing is dropped after this.
    max_attempts: int = Field(3, ge=1)
