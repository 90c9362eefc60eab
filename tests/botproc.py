"""Run ``python -m bot`` as a real process for process-level tests: start, wait for /health, find its database child."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import psutil
import yaml

from bench.chaos.botproc import merge, share_model_copies

ROOT = Path(__file__).resolve().parents[1]


def fast_config(folder: Path, override: dict | None = None) -> Path:
    """bot.yaml as shipped (embedded store and all) but with llama.cpp for the chat model too, so a start
    takes seconds, not the minute the dequantizing transformers load takes on 2 cores."""
    cfg = yaml.safe_load((ROOT / "bot.yaml").read_text(encoding="utf-8"))
    cfg["models"]["chat"] = {**cfg["models"]["roleplay"], "max_new_tokens": {"policy": "fixed", "fixed": 60}}
    cfg["cards"]["directory"] = str(ROOT / "cards")
    cfg["limits"]["requests_per_minute"] = 0
    path = folder / "bot.yaml"
    path.write_text(yaml.safe_dump(merge(cfg, override or {}), allow_unicode=True), encoding="utf-8")
    share_model_copies(folder)
    return path


def bot_env(**extra: str) -> dict[str, str]:
    """The environment of a user who set nothing: no key, no platform tokens, the embedded store."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
    for var in ("BOT_API_KEY", "DISCORD_TOKEN", "TELEGRAM_TOKEN", "MONGO_URI", "MONGO_HOST"):
        env.pop(var, None)
    env.update(extra)
    return env


def start_bot(data: Path, port: int, *args: str, cwd: Path = ROOT, env: dict | None = None) -> subprocess.Popen:
    log = open(data.parent / f"{data.name}-bot.log", "ab")
    return subprocess.Popen([sys.executable, "-m", "bot", "--http-port", str(port), "--data-dir", str(data), *args],
                            cwd=cwd, env=env or bot_env(), stdout=log, stderr=subprocess.STDOUT)


def bot_log(data: Path) -> str:
    return (data.parent / f"{data.name}-bot.log").read_text(errors="replace")


async def wait_health(url: str, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"the bot exited with {proc.returncode}"
            try:
                async with s.get(url + "/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.5)
    raise AssertionError("no /health 200 in time")


def database_pid(data: Path) -> int:
    return json.loads((data / "mongo" / "server.json").read_text())["pid"]


def gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


async def start_orphan(mongo: Path, port: int) -> subprocess.Popen:
    """What a killed bot of an older version left behind: a bare nx-27017 on the data dir, in its own session."""
    orphan = subprocess.Popen(
        [str(Path(sys.executable).with_name("nx-27017")), "--host", "127.0.0.1", "-p", str(port),
         "--data-dir", str(mongo / "db"), "--pid-file", str(mongo / "nx-27017.pid"),
         "--log-file", str(mongo / "orphan.log")],
        start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):
        if (mongo / "nx-27017.pid").exists():
            break
        await asyncio.sleep(0.1)
    return orphan


def stop_bot(proc: subprocess.Popen, timeout: float = 60) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode
