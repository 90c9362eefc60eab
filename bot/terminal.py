"""Terminal chat (python -m bot chat): the engine from a terminal, streamed, on the bot's own store."""
from __future__ import annotations

import argparse
import asyncio
import collections
import getpass
import logging
import signal
import sys
import threading
from pathlib import Path
from typing import Callable

from bot.config import ConfigError, Loaded, load
from bot.http.legacy import SESSION_SCOPES, session_speaker
from bot.i18n import describe, text
from engine.errors import EngineError, GenerationCancelled
from engine.types import Speaker, Turn

EXIT_WORDS = ("/exit", "/quit", "종료")

TEXTS = {
    "hello": {"ko": "대화를 시작합니다 ({who}). 명령: /reset 새 대화, /stop 답변 멈춤 (Ctrl-C), /character 이름, "
                    "/exit 또는 종료.",
              "en": "Chatting with {who}. Commands: /reset new conversation, /stop the reply (Ctrl-C), "
                    "/character NAME, /exit (or 종료)."},
    "reset": {"ko": "새 대화를 시작했어요.", "en": "Started a new conversation."},
    "nothing": {"ko": "멈출 답변이 없어요.", "en": "No reply to stop."},
    "stopped": {"ko": "[답변을 멈췄어요]", "en": "[reply stopped]"},
    "character": {"ko": "이제 {name}와(과) 대화합니다.", "en": "Now talking to {name}."},
    "no_character": {"ko": "그런 캐릭터가 없어요. 있는 캐릭터: {names}", "en": "No such character. Characters: {names}"},
    "unknown": {"ko": "모르는 명령이에요: {cmd} (/exit, /reset, /stop, /character 이름)",
                "en": "Unknown command: {cmd} (/exit, /reset, /stop, /character NAME)"},
    "interrupt": {"ko": "(끝내려면 /exit 또는 종료)", "en": "(type /exit or 종료 to quit)"},
    "bye": {"ko": "안녕히 가세요.", "en": "Bye."},
}


def _lines_from(stream, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue) -> None:
    """Read UTF-8 lines (Korean from any IME arrives as whole characters) until EOF, then None."""
    for raw in iter(stream.readline, b""):
        loop.call_soon_threadsafe(queue.put_nowait, raw.decode("utf-8", errors="replace").rstrip("\r\n"))
    loop.call_soon_threadsafe(queue.put_nowait, None)


class TerminalChat:
    """One person at a terminal: lines in, streamed replies out, a few slash commands."""

    def __init__(self, engine, lang: str, write: Callable[[str], None], *, mode: str = "chat",
                 character: str | None = None, session: str | None = None, user: str = "User"):
        self.engine, self.lang, self.write = engine, lang, write
        self.mode, self.character, self.session = mode, character, session
        self.user = user
        self.lines: asyncio.Queue = asyncio.Queue()
        self.pending: collections.deque = collections.deque()
        self.current = None

    def say(self, key: str, **kw) -> None:
        self.write(text(TEXTS, key, self.lang, **kw) + "\n")

    # who and where ------------------------------------------------------------------------------

    def speaker(self) -> Speaker:
        if self.session:       # the very owner /Llama_stream uses for {"session": ...}
            return session_speaker(self.session, self.lang)
        return Speaker(id=f"terminal:{self.user}", name=self.user, lang=self.lang)

    def scope(self) -> str:
        if self.session:
            return SESSION_SCOPES["lumimaid" if self.mode == "roleplay" else "llama"]
        return "terminal"

    def turn(self, line: str) -> Turn:
        return Turn(speaker=self.speaker(), scope=self.scope(), text=line, mode=self.mode,
                    character=self.character if self.mode == "roleplay" else None)

    def names(self) -> list[str]:
        return self.engine.characters().names()

    def choose(self, name: str) -> bool:
        found = self.engine.characters().character(name)
        if found is None:
            self.say("no_character", names=", ".join(self.names()) or "-")
            return False
        self.mode, self.character = "roleplay", found.name
        return True

    # the loop -----------------------------------------------------------------------------------

    async def next_line(self) -> str | None:
        return self.pending.popleft() if self.pending else await self.lines.get()

    def interrupt(self) -> None:
        """Ctrl-C: stop the reply being written; at the prompt only say how to quit."""
        if self.current is not None:
            self.current.cancel("user")
        else:
            self.write("\n")
            self.say("interrupt")

    async def run(self) -> int:
        self.say("hello", who=self.character or self.mode)
        while True:
            line = await self.next_line()
            if line is None:
                break
            line = line.strip()
            if not line:
                continue
            if line in EXIT_WORDS:
                break
            if line.startswith("/"):
                await self.command(line)
            else:
                await self.reply(line)
        self.say("bye")
        return 0

    async def command(self, line: str) -> None:
        cmd, _, arg = line.partition(" ")
        if cmd == "/reset":
            await self.engine.reset(self.speaker().id, self.scope())
            self.say("reset")
        elif cmd == "/stop":
            self.say("nothing")
        elif cmd == "/character" and arg.strip():
            if self.choose(arg.strip()):
                self.say("character", name=self.character)
        elif cmd == "/character":
            self.say("no_character", names=", ".join(self.names()) or "-")
        else:
            self.say("unknown", cmd=cmd)

    async def _watch(self, reply) -> None:
        """While a reply streams, '/stop' typed on its own line stops it; other lines wait their turn."""
        while True:
            line = await self.lines.get()
            if line is not None and line.strip() == "/stop":
                reply.cancel("user")
            else:
                self.pending.append(line)
                if line is None:
                    return

    async def reply(self, line: str) -> None:
        reply = self.engine.reply(self.turn(line))
        self.current = reply
        watcher = asyncio.create_task(self._watch(reply))
        self.write(f"{self.character or 'AI'}: ")
        try:
            async for piece in reply:
                self.write(piece)
            self.write("\n")
        except GenerationCancelled:
            self.write("\n")
            self.say("stopped")
        except EngineError as e:
            self.write("\n" + describe(e, self.lang) + "\n")
        finally:
            self.current = None
            watcher.cancel()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bot chat", description="Chat with the bot's models in this "
                                "terminal, on the same conversations as the bot (with --session, the HTTP one).")
    p.add_argument("--config", default="bot.yaml", help="path of the config file (default: bot.yaml)")
    p.add_argument("--data-dir", default="./data", help="the bot's data dir; a bot running on it lends its "
                                                        "database (default: ./data)")
    p.add_argument("--model", choices=("chat", "roleplay"), default="chat", help="which model (default: chat)")
    p.add_argument("--character", help="talk to this character (roleplay)")
    p.add_argument("--session", help="continue the HTTP session of this id (/Llama_stream's \"session\", "
                                     "GET /conversations/ID)")
    p.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING or ERROR (default: WARNING)")
    return p.parse_args(argv)


async def chat(args: argparse.Namespace, loaded: Loaded) -> int:
    from bot.app import start_engine
    from engine.loading import ModelLoadError
    from engine.store.embedded import running_server_uri

    data_dir = Path(args.data_dir)
    uri = loaded.secrets.mongo_uri or running_server_uri(data_dir)
    try:
        engine = await start_engine(loaded, data_dir, mongo_uri=uri)
    except (ModelLoadError, RuntimeError) as e:
        print(f"start-up error: {e}", file=sys.stderr)
        return 3
    out = sys.stdout

    def write(piece: str) -> None:
        out.write(piece)
        out.flush()

    lang = loaded.config.language.default
    session = TerminalChat(engine, lang, write, mode=args.model, session=args.session, user=getpass.getuser())
    loop = asyncio.get_running_loop()
    try:
        if args.character and not session.choose(args.character):
            return 2
        if session.mode == "roleplay" and session.character is None:
            if not session.names():
                session.say("no_character", names="-")
                return 2
            session.choose(session.names()[0])
        threading.Thread(target=_lines_from, args=(sys.stdin.buffer, loop, session.lines), daemon=True,
                         name="stdin").start()
        loop.add_signal_handler(signal.SIGINT, session.interrupt)
        return await session.run()
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        await engine.close(grace_s=2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")
    try:
        loaded = load(args.config)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    return asyncio.run(chat(args, loaded))
