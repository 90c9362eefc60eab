"""The bot: entry point, platform adapters and the HTTP sidecar around one engine."""
