"""The `telegram:` section of bot.yaml."""
from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from engine.settings import Strict


class TelegramWebhook(Strict):
    listen: str = "127.0.0.1"
    port: int = Field(8443, ge=1, le=65535)
    url: str | None = None               # the public https URL Telegram posts to
    path: str = "telegram"               # the local URL path the webhook is served on
    secret_token_env: str = "TELEGRAM_WEBHOOK_SECRET"


class TelegramPermissions(Strict):
    admin_user_ids: tuple[int, ...] = ()
    allowed_user_ids: tuple[int, ...] = ()   # empty: everyone
    allowed_chat_ids: tuple[int, ...] = ()   # groups; empty: every group
    shared_group_ids: tuple[int, ...] = ()   # groups whose members share one conversation


class TelegramConfig(Strict):
    base_url: str = "https://api.telegram.org/bot"
    base_file_url: str = "https://api.telegram.org/file/bot"
    mode: Literal["polling", "webhook"] = "polling"
    webhook: TelegramWebhook = TelegramWebhook()
    draft_interval_s: float = Field(0.5, ge=0.05)
    edit_interval_s: float = Field(1.0, ge=0.05)         # least time between messages/edits in one private chat
    group_messages_per_minute: int = Field(20, ge=1)     # Telegram's limit per group (edits count)
    messages_per_second: int = Field(30, ge=1)           # Telegram's overall limit for one bot
    typing_interval_s: float = Field(4.0, gt=0)          # Telegram shows "typing" for about 5 s
    poll_timeout_s: float = Field(10.0, ge=0)            # long-polling getUpdates timeout
    max_backoff_s: float = Field(30.0, ge=0.1)           # the longest wait between tries while the server is down
    stop_grace_s: float = Field(10.0, ge=0)              # replies in flight get this long to finish at shutdown
    max_attempts: int = Field(3, ge=1)                   # an update that keeps failing is dropped after this many tries
    permissions: TelegramPermissions = TelegramPermissions()

    @model_validator(mode="after")
    def _webhook_needs_url(self) -> "TelegramConfig":
        if self.mode == "webhook" and not self.webhook.url:
            raise ValueError("mode: webhook needs webhook.url (the public https URL Telegram posts to)")
        return self
