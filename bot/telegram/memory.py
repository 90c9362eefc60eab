"""/memory, /pin, /unpin, /forget: what the bot remembers of the conversation in this chat."""
from __future__ import annotations

from typing import Awaitable, Callable

from bot.i18n import describe, memory_text, section, text
from bot.telegram.characters import Characters
from bot.telegram.context import Replier, Where
from engine.api import EngineAPI
from engine.errors import EngineError
from engine.types import Turn

MESSAGE_CHARS = 4096
MEMORY = section("memory")


class MemoryCommands:
    """Each command acts on the conversation a message here would continue (with the active character, if any)."""

    def __init__(self, engine: EngineAPI, characters: Characters):
        self.engine, self.characters = engine, characters

    def handlers(self) -> dict[str, Callable[..., Awaitable[None]]]:
        return {"memory": self.cmd_memory, "pin": self.cmd_pin, "unpin": self.cmd_unpin, "forget": self.cmd_forget}

    async def _conversation(self, where: Where) -> str:
        character = await self.characters.current(where)
        mode = "roleplay" if character else "chat"
        if where.shared:
            return await self.engine.active_conversation(where.owner, where.scope, mode, character)
        return await self.engine.conversation_for(Turn(speaker=where.speaker, scope=where.scope, text="", mode=mode,
                                                       character=character))

    async def _run(self, where: Where, out: Replier, act: Callable[[str], Awaitable[str]]) -> None:
        """Run ``act`` on the conversation and send what it returns; a refusal (bad number, no room) is said too."""
        try:
            answer = await act(await self._conversation(where))
        except EngineError as e:
            answer = describe(e, out.lang)
        await out.say_text(answer)

    async def cmd_memory(self, where, message, args, entry, out: Replier) -> None:
        async def show(conv: str) -> str:
            return memory_text(await self.engine.memory_of(conv), out.lang, limit=MESSAGE_CHARS)
        await self._run(where, out, show)

    async def cmd_pin(self, where, message, args, entry, out: Replier) -> None:
        if not args:
            return await out.say("pin_usage")

        async def pin(conv: str) -> str:
            last = (await self.engine.pin_fact(conv, args, by=where.speaker.id))["pins"][-1]
            return text(MEMORY, "pinned", out.lang, n=last["n"], text=last["text"])
        await self._run(where, out, pin)

    async def cmd_unpin(self, where, message, args, entry, out: Replier) -> None:
        if not args.strip().isdigit():
            return await out.say("unpin_usage")

        async def unpin(conv: str) -> str:
            return text(MEMORY, "unpinned", out.lang, text=await self.engine.unpin_fact(conv, int(args)))
        await self._run(where, out, unpin)

    async def cmd_forget(self, where, message, args, entry, out: Replier) -> None:
        async def forget(conv: str) -> str:
            await self.engine.forget(conv, by=where.speaker.id)
            return text(MEMORY, "forgot", out.lang)
        await self._run(where, out, forget)
