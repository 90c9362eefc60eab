"""Command line: python -m bot [--config F] [--data-dir D] [--http-host H] [--http-port P]; python -m bot chat|prepare."""
from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from bot.config import ConfigError, load
from bot.startup import StartupError, check_data_dir, one_line

log = logging.getLogger("bot")
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):      # one line, not the usage block and then the error
        self.exit(2, f"{self.prog}: {message} (see --help)\n")


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{port} is not a port number (0 to 65535; 0: any free port)")
    return port


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _Parser(prog="python -m bot", description="LLM chat and character roleplay bot "
                "for Discord and Telegram, with an HTTP API. 'python -m bot chat --help': chat in this terminal.")
    p.add_argument("--config", default="bot.yaml", help="path of the config file (default: bot.yaml)")
    p.add_argument("--data-dir", default="./data",
                   help="where the embedded database, the API key and the log file live (default: ./data)")
    p.add_argument("--http-host", default=None, help="HTTP API address (default: http.host in bot.yaml, 127.0.0.1)")
    p.add_argument("--http-port", type=_port, default=None,
                   help="HTTP API port (default: http.port in bot.yaml, 8080)")
    p.add_argument("--log-level", type=str.upper, choices=LEVELS, default=None,
                   help="DEBUG, INFO, WARNING or ERROR (default: logging.level in bot.yaml, INFO)")
    return p.parse_args(argv)


def _fail(kind: str, e: BaseException, code: int) -> int:
    print(f"{kind}: {one_line(e)}", file=sys.stderr, flush=True)
    return code


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["chat"]:          # the terminal chat; no subcommand keeps starting the bot
        from bot.terminal import main as chat_main

        return chat_main(argv[1:])
    if argv[:1] == ["prepare"]:
        from bot.prepare import main as prepare_main

        return prepare_main(argv[1:])
    args = parse_args(argv)
    try:
        loaded = load(args.config)
    except ConfigError as e:
        return _fail("config error", e, 2)
    data_dir = Path(args.data_dir)
    from bot.logs import setup_logging

    try:
        check_data_dir(data_dir)
        setup_logging(loaded.config.logging, data_dir, args.log_level)
    except StartupError as e:
        return _fail("start-up error", e, 2)
    from bot.app import App        # heavy imports (torch) only once the config is known to be good
    from engine.loading import ModelLoadError
    from engine.store.embedded import EmbeddedServerError

    app = App(loaded, data_dir, args.http_host, args.http_port)
    try:
        asyncio.run(app.run_until_signal())
    except ModelLoadError as e:
        return _fail("model error", e, 3)
    except (StartupError, EmbeddedServerError) as e:
        return _fail("start-up error", e, 4)
    except KeyboardInterrupt:
        pass
    except Exception as e:  # noqa: BLE001 - a user gets one line; the traceback goes to the log at DEBUG
        log.debug("fatal error", exc_info=True)
        return _fail(f"error ({type(e).__name__}; --log-level DEBUG shows where)", e, 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
