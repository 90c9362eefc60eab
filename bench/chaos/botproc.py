"""Start `python -m bot` as a user would (default bot.yaml, embedded store, its own data dir) and watch it."""
from __future__ import annotations

import asyncio
import copy
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import psutil
import yaml

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "chaos-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def merge(base: dict, override: dict) -> dict:
    """``base`` with ``override``'s keys in place, section by section (nested dicts merge, other values replace)."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def write_config(path: Path, override: dict | None = None, tokens: int = 16) -> Path:
    """bot.yaml as shipped, with short replies (``tokens``) so thousands of requests finish in minutes, and the
    keys of ``override``'s sections in place of the shipped ones."""
    cfg = yaml.safe_load((ROOT / "bot.yaml").read_text(encoding="utf-8"))
    for role in ("chat", "roleplay"):
        cfg["models"][role]["max_new_tokens"] = {"policy": "fixed", "fixed": tokens}
    cfg["cards"]["directory"] = str(ROOT / "cards")
    path.write_text(yaml.safe_dump(merge(cfg, override or {}), allow_unicode=True), encoding="utf-8")
    share_model_copies(path.parent)
    return path


def share_model_copies(folder: Path) -> None:
    """A bot.yaml in ``folder`` keeps its model copies (dequantized, re-encoded) in ``folder``/ai_model: point
    that at the repository's, so each bot started here does not make them again."""
    if not (folder / "ai_model").exists():
        (ROOT / "ai_model").mkdir(exist_ok=True)
        (folder / "ai_model").symlink_to(ROOT / "ai_model", target_is_directory=True)


def db_processes(data_dir: Path) -> list[psutil.Process]:
    """nx-27017 servers working on this data dir (a leftover one is an orphan)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "nx-27017" in cmd and str(data_dir) in cmd:
            found.append(p)
    return found


class BotProcess:
    """One bot process on a fresh port; ``async with`` starts it, waits for /health and stops it after."""

    def __init__(self, data_dir: Path, env: dict | None = None, override: dict | None = None, tokens: int = 16):
        self.data_dir = data_dir
        self.port = free_port()
        self.api_key = API_KEY
        self.env = {**os.environ, "BOT_API_KEY": API_KEY, "PYTHONUNBUFFERED": "1", **(env or {})}
        for var in ("DISCORD_TOKEN", "TELEGRAM_TOKEN", "MONGO_URI", "MONGO_HOST"):
            if var not in (env or {}):
                self.env.pop(var, None)
        self.override = override
        self.tokens = tokens
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 240) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = write_config(self.data_dir.parent / f"{self.data_dir.name}.bot.yaml", self.override, self.tokens)
        log = open(self.data_dir.parent / f"{self.data_dir.name}.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "bot", "--config", str(config), "--data-dir",
                                      str(self.data_dir), "--http-port", str(self.port)],
                                     cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the bot exited with {self.proc.returncode} at start (see {log.name})")
            if await self.health_status() == 200:
                return
            await asyncio.sleep(0.5)
        raise RuntimeError("the bot did not become healthy in time")

    async def health_status(self) -> int | None:
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as s:
                async with s.get(self.url + "/health") as r:
                    return r.status
        except (aiohttp.ClientError, asyncio.TimeoutError):
            return None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def rss_mb(self) -> float:
        try:
            return psutil.Process(self.proc.pid).memory_info().rss / 2 ** 20
        except (psutil.Error, AttributeError):
            return 0.0

    def kill(self) -> None:
        """SIGKILL, as the OOM killer would."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, timeout: float = 60) -> int | None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode if self.proc else None

    def orphans(self, wait_s: float = 5) -> int:
        deadline = time.monotonic() + wait_s
        while db_processes(self.data_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = db_processes(self.data_dir)
        for p in left:            # do not leave them behind for the next run
            p.kill()
        return len(left)

    async def __aenter__(self) -> "BotProcess":
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        self.stop()
