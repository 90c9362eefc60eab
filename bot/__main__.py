"""Command line: python -m bot [--config F] [--data-dir D] [--http-host H] [--http-port P]; python -m bot chat …"""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from bot.config import ConfigError, load


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bot", description="LLM chat and character roleplay bot "
                                "for Discord and Telegram, with an HTTP API. 'python -m bot chat --help': "
                                "chat in this terminal.")
    p.add_argument("--config", default="bot.yaml", help="path of the config file (default: bot.yaml)")
    p.add_argument("--data-dir", default="./data", help="where the embedded database keeps its files (default: ./data)")
    p.add_argument("--http-host", default=None, help="HTTP API address (default: http.host in bot.yaml, 127.0.0.1)")
    p.add_argument("--http-port", type=int, default=None, help="HTTP API port (default: http.port in bot.yaml, 8080)")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING or ERROR (default: INFO)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["chat"]:          # the terminal chat; no subcommand keeps starting the bot
        from bot.terminal import main as chat_main

        return chat_main(argv[1:])
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "pymongo", "discord.gateway", "aiohttp.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        loaded = load(args.config)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    from bot.app import App        # heavy imports (torch) only once the config is known to be good
    from engine.loading import ModelLoadError

    app = App(loaded, Path(args.data_dir), args.http_host, args.http_port)
    try:
        asyncio.run(app.run_until_signal())
    except ModelLoadError as e:
        print(f"model error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
