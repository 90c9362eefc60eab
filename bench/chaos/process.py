"""The process-fault rows of `make chaos`: SIGKILL mid-reply then restart (Telegram, Discord), the database child killed.

Each row runs a real `python -m bot` with the default config (embedded store, no
MONGO_URI) against the fakes from tests/ on 127.0.0.1, kills it the way the OOM
killer would, starts it again on the same data dir and counts: ``lost`` (the
cut-off message never got a complete answer), ``twice`` (answers beyond one),
``orphans`` (database servers left running by the killed bot).
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import aiohttp

from bench.chaos.botproc import BotProcess, db_processes
from tests.fake_discord import FakeDiscord
from tests.fake_telegram import FakeTelegram

INDICATOR = " ▌"
WAIT_S = 300.0          # a model load plus one reply on a busy machine
LONG_ASK = "Write a long story about a lighthouse keeper and a storm."
TOKENS = 120            # long enough to be cut off mid-reply, short enough to finish after the restart


async def until(predicate: Callable[[], Any], timeout: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await asyncio.sleep(0.1)
    return None


async def killed_and_restarted(data_dir: Path, env: dict, override: dict, cut_off: Callable[[], Awaitable[bool]],
                               finished: Callable[[], Awaitable[bool]]) -> dict:
    """Start, wait until ``cut_off`` (a reply is partly out), SIGKILL, start again, wait until ``finished``."""
    row: dict[str, Any] = {"orphans": 0}
    first = BotProcess(data_dir, env=env, override=override, tokens=TOKENS)
    await first.start()
    try:
        if not await cut_off():
            row["note"] = "the reply was never seen in progress"
            return row
        first.kill()
        row["orphans"] = first.orphans()      # killed (and counted) so the restart below can run at all
        second = BotProcess(data_dir, env=env, override=override, tokens=TOKENS)
        try:
            await second.start()
        except RuntimeError as e:
            row["note"] = f"restart failed: {e}"
            return row
        try:
            row["completed"] = await finished()
        finally:
            second.stop()
            row["orphans"] += second.orphans()
    finally:
        first.stop()
    return row


async def telegram_row(base: Path, group: bool) -> dict:
    fake = await FakeTelegram(bot_id=770001 + group).start()
    chat = -100770 if group else 770
    ask = f"@{fake.username} {LONG_ASK}" if group else LONG_ASK
    override = {"telegram": {"base_url": fake.base_url, "base_file_url": fake.base_file_url,
                             "draft_interval_s": 0.1, "edit_interval_s": 0.3, "poll_timeout_s": 1,
                             "max_backoff_s": 1}}

    def sends() -> list:
        return fake.calls_of("sendMessage", chat)

    async def cut_off() -> bool:
        fake.send_text(chat, "/help")
        if not await until(lambda: len(sends()) >= 1):
            return False
        fake.send_text(chat, ask)
        progress = "editMessageText" if group else "sendMessageDraft"
        return bool(await until(lambda: fake.calls_of(progress, chat)))

    async def finished() -> bool:
        if not await until(lambda: fake.sent_texts(chat) and not fake.sent_texts(chat)[-1].endswith(INDICATOR)
                           and len(fake.sent_texts(chat)) >= 2):
            return False
        fake.send_text(chat, "/help")                     # the restarted bot goes on to new work
        return bool(await until(lambda: len(fake.sent_texts(chat)) >= 3, 120))

    try:
        row = await killed_and_restarted(base / f"tg-{'group' if group else 'dm'}",
                                         {"TELEGRAM_TOKEN": fake.token}, override, cut_off, finished)
        texts = fake.sent_texts(chat)                      # help, the reply (one message), help
        replies = texts[1:-1] if len(texts) >= 3 else texts[1:]
        row.update(lost=int(not row.get("completed") or not replies or replies[-1].endswith(INDICATOR)),
                   twice=max(0, len(replies) - 1))
    finally:
        await fake.stop()
    return {"fault": f"SIGKILL mid-reply, restart: Telegram {'group' if group else 'DM'}", **row}


async def discord_row(base: Path, slash: bool) -> dict:
    fake = await FakeDiscord().start()
    override = {"discord": {"api_base_url": fake.api_base_url, "gateway_url": fake.gateway_url,
                            "edit_interval_s": 0.3, "typing": False}}
    cid = fake.channel_ids[1]
    state: dict[str, Any] = {}

    def mine() -> list[dict]:
        return [m for m in fake.channel_messages(cid) if m["author"]["id"] == str(fake.app_id)]

    def partial(m: dict | None) -> bool:
        return bool(m and m["content"].endswith(INDICATOR))

    def complete(m: dict | None) -> bool:
        return bool(m and m["content"].strip() and not m["content"].endswith(INDICATOR))

    async def cut_off() -> bool:
        await until(lambda: fake.commands and fake.identifies)
        if slash:
            inter = await fake.slash("chat", [{"name": "message", "type": 3, "value": LONG_ASK}], user_id=701,
                                     channel_id=cid)
            state["inter"] = inter
            return bool(await until(lambda: partial(fake.original(inter))))
        state["ask"] = await fake.post(LONG_ASK, user_id=701, channel_id=cid, mention_bot=True)
        return bool(await until(lambda: any(partial(m) for m in mine())))

    def answer() -> dict | None:
        if slash:
            return fake.original(state["inter"])
        asked = state["ask"]["id"]
        return next((m for m in mine() if str((m.get("message_reference") or {}).get("message_id")) == asked), None)

    async def finished() -> bool:
        if not await until(lambda: complete(answer())):
            return False
        await fake.post("Say hello.", user_id=702, channel_id=fake.channel_ids[2], mention_bot=True)
        return bool(await until(lambda: [m for m in fake.channel_messages(fake.channel_ids[2])
                                         if m["author"]["id"] == str(fake.app_id) and complete(m)], 120))

    try:
        row = await killed_and_restarted(base / f"dc-{'slash' if slash else 'mention'}",
                                         {"DISCORD_TOKEN": "chaos-token"}, override, cut_off, finished)
        if slash:
            inter = state.get("inter")
            extra = len(mine()) - (1 + len(inter.followups)) if inter else 0
        else:
            asked = state.get("ask", {}).get("id")
            extra = len([m for m in mine()
                         if str((m.get("message_reference") or {}).get("message_id")) == asked]) - 1
        row.update(lost=int(not row.get("completed") or not complete(answer() if state else None)),
                   twice=max(0, extra))
    finally:
        await fake.close()
    return {"fault": f"SIGKILL mid-reply, restart: Discord {'/chat' if slash else 'mention'}", **row}


async def database_row(base: Path, turns: int = 4) -> dict:
    """Kill the embedded database child mid-conversation; every user message and reply must be stored after."""
    data_dir = base / "db-kill"
    session = "chaos-db"
    bot = BotProcess(data_dir)
    await bot.start()
    sent, refused, killed = 0, 0, False
    headers = {"X-API-Key": bot.api_key}
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=180)) as s:
            for i in range(turns):
                try:
                    async with s.post(f"{bot.url}/Llama_stream", headers=headers,
                                      json={"input_data": f"Message number {i}.", "session": session}) as r:
                        if i == turns // 2:          # mid-stream: the reply is being written when the store dies
                            await r.content.readany()
                            for p in db_processes(data_dir):
                                p.kill()
                                killed = True
                        await r.read()
                        sent += r.status == 200
                        refused += r.status != 200
                except aiohttp.ClientError:
                    refused += 1
        bot.stop()
        bot.orphans()
        again = BotProcess(data_dir)
        await again.start()
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as s:
                async with s.get(f"{again.url}/conversations/{session}", headers=headers) as r:
                    body = json.loads(await r.read() or b"{}")
        finally:
            again.stop()
            orphans = again.orphans()
    finally:
        bot.stop()
    stored = body.get("messages") or [] if isinstance(body, dict) else []
    users = [m for m in stored if m.get("role") == "user"]
    replies = [m for m in stored if m.get("role") == "assistant"]
    return {"fault": "database child killed mid-conversation", "lost": max(0, 2 * sent - len(users) - len(replies)),
            "answered": sent, "orphans": orphans,
            "note": (f"{refused} refused while the store was down; " if refused else "")
            + ("" if killed else "no database child found to kill")}


async def process_rows(base: Path, short: bool) -> list[dict]:
    """Each fault once (``short``: one Telegram kill, one Discord kill and the database kill)."""
    jobs: list[tuple[str, Callable[[], Awaitable[dict]]]] = [
        ("Telegram DM", lambda: telegram_row(base, group=False)),
        ("Telegram group", lambda: telegram_row(base, group=True)),
        ("Discord mention", lambda: discord_row(base, slash=False)),
        ("Discord /chat", lambda: discord_row(base, slash=True)),
        ("database child", lambda: database_row(base))]
    if short:
        jobs = [jobs[0], jobs[2], jobs[4]]
    rows = []
    for name, job in jobs:
        try:
            rows.append(await job())
        except Exception as e:  # noqa: BLE001 - one row's failure is reported, not the whole table's
            rows.append({"fault": f"{name}: the run failed", "lost": 1, "note": f"{type(e).__name__}: {e}"})
    return rows
