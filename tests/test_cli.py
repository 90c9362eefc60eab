"""`python -m bot` as a user runs it: options, config errors, checksum refusal, start, stop, restart."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import psutil
import pytest

from botproc import wait_health
from conftest import API_KEY, ROOT, free_port

ENV = {**os.environ, "BOT_API_KEY": API_KEY, "PYTHONUNBUFFERED": "1"}
for var in ("DISCORD_TOKEN", "TELEGRAM_TOKEN", "MONGO_URI", "MONGO_HOST"):
    ENV.pop(var, None)


def bot(*args: str, cwd: Path = ROOT, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=120, **kw)


def test_help_lists_the_options():
    out = bot("--help").stdout
    for option in ("--config", "--data-dir", "--http-host", "--http-port"):
        assert option in out


def test_a_wrong_config_stops_with_one_line_naming_key_and_line(tmp_path):
    text = (ROOT / "bot.yaml").read_text(encoding="utf-8").replace("top_k: 51", "top_k: many")
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "top_k: many" in l)
    (tmp_path / "bot.yaml").write_text(text, encoding="utf-8")
    result = bot("--config", str(tmp_path / "bot.yaml"))
    assert result.returncode == 2
    err = result.stderr.strip().splitlines()
    assert len(err) == 1 and f"bot.yaml:{line}: models.chat.top_k:" in err[0], result.stderr


def test_sha256_mismatch_refuses_to_start(tmp_path):
    text = (ROOT / "bot.yaml").read_text(encoding="utf-8").replace(
        "    device: cpu", "    sha256: " + "ab" * 32 + "\n    device: cpu", 1)
    (tmp_path / "bot.yaml").write_text(text, encoding="utf-8")
    result = bot("--config", str(tmp_path / "bot.yaml"), "--data-dir", str(tmp_path / "data"),
                 "--http-port", str(free_port()))
    assert result.returncode == 3
    assert "sha256" in result.stderr and "refusing to start" in result.stderr


def _start(data: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bot", "--http-port", str(port), "--data-dir", str(data)],
                            cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _stop(proc: subprocess.Popen) -> str:
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE], "child left running"
    return out


@pytest.mark.timeout(600)
async def test_start_serve_stop_and_remember_across_a_restart(tmp_path):
    data, port = tmp_path / "data", free_port()
    url = f"http://127.0.0.1:{port}"
    headers = {"X-API-Key": API_KEY}
    proc = _start(data, port)
    try:
        await wait_health(url, proc)
        async with aiohttp.ClientSession(headers=headers) as s:
            async with s.post(url + "/Llama_stream", json={"input_data": "My favourite fruit is the durian.",
                                                            "session": "restart-1"}) as r:
                chunks = [c async for c, _ in r.content.iter_chunks()]
            assert r.status == 200 and len(chunks) >= 2
            dbs = await (await s.get(url + "/mongo/db")).json()
            assert "llmbot" in dbs["Database"]
    finally:
        out = _stop(proc)
    assert "Discord adapter off" in out and "Telegram adapter off" in out
    proc = _start(data, port)
    try:
        await wait_health(url, proc)
        async with aiohttp.ClientSession(headers=headers) as s:
            conv = await (await s.get(url + "/conversations/restart-1")).json()
    finally:
        _stop(proc)
    assert conv["messages"][0] == {**conv["messages"][0], "role": "user", "content": "My favourite fruit is the durian."}
    assert conv["messages"][1]["role"] == "assistant" and conv["messages"][1]["content"].strip()
