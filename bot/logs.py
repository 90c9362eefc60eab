"""Configure logging from bot.yaml's ``logging`` section: a level, stderr, and an optional rotating file."""
from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

from bot.config import LoggingConfig
from bot.startup import StartupError

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
NOISY = ("httpx", "pymongo", "discord.gateway", "aiohttp.access")


def log_file_path(cfg: LoggingConfig, data_dir: Path) -> Path | None:
    if not cfg.file:
        return None
    path = Path(cfg.file).expanduser()
    return path if path.is_absolute() else data_dir / path


def setup_logging(cfg: LoggingConfig, data_dir: Path, level_override: str | None = None) -> Path | None:
    """Install the handlers; returns the log file, if any."""
    level = (level_override or cfg.level).upper()
    handlers: list[logging.Handler] = [logging.StreamHandler()]
    path = log_file_path(cfg, data_dir)
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handlers.append(logging.handlers.RotatingFileHandler(
                path, maxBytes=cfg.max_bytes, backupCount=cfg.backups, encoding="utf-8"))
        except OSError as e:
            raise StartupError(f"logging.file: cannot write {path} ({e.strerror or e})") from None
    logging.basicConfig(level=level, format=FORMAT, handlers=handlers, force=True)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    return path
