"""Discord adapter (discord.py): slash commands, mentions, DMs, streamed edits, character webhooks."""
