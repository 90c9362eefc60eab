"""Telegram adapter (python-telegram-bot): commands, DMs streamed as drafts, groups streamed by edits."""
