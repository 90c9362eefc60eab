"""Terminal chat (python -m bot chat): streamed replies, commands, Ctrl-C, and the HTTP session it shares."""
from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time

import aiohttp
import psutil
import pytest

from bot.terminal import TerminalChat
from conftest import API_KEY, ROOT, free_port
from botproc import wait_health as _wait_health
from test_cli import _start, _stop

ENV = {**os.environ, "BOT_API_KEY": API_KEY, "PYTHONUNBUFFERED": "1"}
for var in ("DISCORD_TOKEN", "TELEGRAM_TOKEN", "MONGO_URI", "MONGO_HOST"):
    ENV.pop(var, None)


class Screen:
    """What the terminal shows, with the time of each write."""

    def __init__(self):
        self.writes: list[tuple[float, str]] = []

    def __call__(self, text: str) -> None:
        self.writes.append((time.monotonic(), text))

    @property
    def text(self) -> str:
        return "".join(t for _, t in self.writes)


async def feed(chat: TerminalChat, *lines: str | None) -> None:
    for line in lines:
        chat.lines.put_nowait(line)


async def test_streams_a_reply_and_obeys_commands(engine, speaker_id):
    screen = Screen()
    chat = TerminalChat(engine, "en", screen, user=speaker_id)
    await feed(chat, "  ", "안녕하세요! 한국어로 답해 주세요.", "/reset", "/bogus", "/character Nobody",
               "/character Wren Halloway", "Who are you?", "종료")
    assert await asyncio.wait_for(chat.run(), 300) == 0
    out = screen.text
    pieces = [t for _, t in screen.writes]
    first_ai = pieces.index("AI: ")
    reply = "".join(pieces[first_ai + 1:pieces.index("\n", first_ai)])
    assert reply.strip()
    assert "Started a new conversation." in out and "Unknown command: /bogus" in out
    assert "No such character. Characters:" in out and "Wren" in out
    assert "Now talking to Wren." in out and "\nWren: " in out and out.rstrip().endswith("Bye.")
    history = await engine.store.conversations_of(f"terminal:{speaker_id}")
    assert sorted(c["mode"] for c in history) == ["chat", "roleplay"]


async def test_ctrl_c_and_slash_stop_end_the_reply_not_the_program(engine, speaker_id):
    screen = Screen()
    chat = TerminalChat(engine, "ko", screen, user=speaker_id)
    original = engine.models["chat"]
    long = original.cfg.model_copy(update={"max_new_tokens": original.cfg.max_new_tokens.model_copy(
        update={"fixed": 400})})
    engine.models["chat"] = dataclasses.replace(original, cfg=long)     # replies long enough to interrupt
    try:
        await _interrupt_twice(chat)
    finally:
        engine.models["chat"] = original
    assert screen.text.count("[답변을 멈췄어요]") == 2 and "(끝내려면 /exit 또는 종료)" in screen.text
    assert "멈출 답변이 없어요." in screen.text and screen.text.rstrip().endswith("안녕히 가세요.")


async def _interrupt_twice(chat: TerminalChat) -> None:
    run = asyncio.create_task(chat.run())
    await feed(chat, "Write a very long story about a dragon and a river.")
    for _ in range(600):                     # until the reply has begun
        if chat.current is not None and chat.current.text:
            break
        await asyncio.sleep(0.05)
    chat.interrupt()                          # what SIGINT does
    await feed(chat, "Tell me another long story, please.")
    for _ in range(600):
        if chat.current is not None and chat.current.text and "dragon" not in chat.current.turn.text:
            break
        await asyncio.sleep(0.05)
    await feed(chat, "/stop")
    for _ in range(600):
        if chat.current is None:
            break
        await asyncio.sleep(0.05)
    chat.interrupt()                          # at the prompt: only a hint
    await feed(chat, "/stop", "/exit")
    assert await asyncio.wait_for(run, 300) == 0


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_terminal_session_is_the_http_session_on_the_running_bots_database(tmp_path):
    """Must-show: printf 'hello\\n/exit\\n' | python -m bot chat --session T, then GET /conversations/T."""
    data, port = tmp_path / "data", free_port()
    url = f"http://127.0.0.1:{port}"
    bot = _start(data, port)
    try:
        await _wait_health(url, bot)
        started = time.monotonic()
        chat = subprocess.Popen([sys.executable, "-m", "bot", "chat", "--session", "T", "--data-dir", str(data)],
                                cwd=ROOT, env=ENV, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        talk = asyncio.create_task(asyncio.to_thread(chat.communicate, b"hello\n/exit\n", 600))
        second_server = False
        while not talk.done() and time.monotonic() - started < 660:
            try:
                children = psutil.Process(chat.pid).children(recursive=True)
                second_server |= any("nx" in " ".join(c.cmdline()) for c in children)
            except psutil.Error:
                pass
            await asyncio.sleep(0.2)
        out, err = await talk
        assert chat.returncode == 0, err.decode()[-2000:]
        assert not second_server                      # it used the running bot's database server
        text = out.decode()
        reply = text.split("AI: ", 1)[1].rstrip("\n").rsplit("\n", 1)[0]      # the goodbye line follows
        assert reply.strip(), text
        async with aiohttp.ClientSession(headers={"X-API-Key": API_KEY}) as s:
            r = await s.get(url + "/conversations/T")
            conv = await r.json()
            assert r.status == 200, conv
    finally:
        _stop(bot)
    assert [m["role"] for m in conv["messages"]] == ["user", "assistant"]
    assert conv["messages"][0]["content"] == "hello" and conv["messages"][1]["content"].strip() == reply.strip()
