"""Running scenes: start/add/remove/auto/end, and one human message's chain of character replies."""
from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, AsyncIterator

from engine.cards.macros import apply_macros
from engine.errors import CharacterNotHere, EngineError, InputTooLong, NoScene, SceneFull, UnknownCharacter
from engine.scenes.model import Scene, draw, mentioned, talkativeness
from engine.scenes.prompt import Line, build_scene_prompt
from engine.scenes.store import SceneStore
from engine.settings import MAX_AUTO_TURNS, SceneSettings
from engine.types import Cue, Speaker, Turn

if TYPE_CHECKING:
    from engine.engine import Engine, Reply

log = logging.getLogger(__name__)

TAKE_OVER_WAIT_S = 300.0     # how long a new message waits for the reply being written before it is answered
PROMPT_RESERVE = 200         # characters of a turn's text kept for the speaker's label and the nudge


@dataclass(eq=False)
class Speech:
    """One character's reply in a scene: iterate it once for text pieces (as an engine Reply).

    ``continuation`` is true for a turn drawn in auto mode (not asked for by
    the human); a new human message stops such a turn at once.
    """

    character: str
    reply: "Reply"
    continuation: bool
    conversation_id: str | None
    _record: object = None
    started: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def text(self) -> str:
        return self.reply.text

    @property
    def status(self) -> str:
        return self.reply.status

    def cancel(self, reason: str = "user") -> None:
        """End the speech within one token (it then raises GenerationCancelled after its partial text)."""
        self.reply.cancel(reason)

    async def _pieces(self) -> AsyncIterator[str]:
        self.started = True
        try:
            async for piece in self.reply:
                yield piece
        finally:
            try:
                await self._record(self)
            except EngineError as e:      # the reply was shown; only its place in the memory is lost
                log.warning("scene reply of %s not stored: %s", self.character, e.detail)
            finally:
                self.finished.set()

    def __aiter__(self) -> AsyncIterator[str]:
        return self._pieces()


@dataclass(eq=False)
class _Chain:
    """The speeches answering one human message in one scope; a newer message stops it."""

    stopped: bool = False
    current: Speech | None = None


class SceneTurn:
    """The characters answering one message: iterate for Speech objects, and each speech for its text.

    Characters named in the message answer first, in the order named; else
    one is drawn by talkativeness. In auto mode (``Scene.auto_turns`` = N) the
    characters go on answering each other until N turns in all. Each speech
    must be read to its end before the next is asked for. The human message
    and every reply are stored in the scene's conversation with their speaker
    (a partial reply too, marked with its status).
    """

    def __init__(self, scenes: "Scenes", turn: Turn, scene: Scene | None = None, lines: list[Line] | None = None):
        self.scenes, self.turn = scenes, turn
        self.scene = scene
        self.lines = lines               # given: a scene kept by the caller (stateless API), nothing stored
        self.speeches: list[Speech] = []
        self._chain = _Chain()

    def cancel(self) -> None:
        """No further speeches; the one being written stops within a token."""
        self._chain.stopped = True
        if self._chain.current is not None:
            self._chain.current.cancel("user")

    def __aiter__(self) -> AsyncIterator[Speech]:
        return self._speeches()

    @property
    def stored(self) -> bool:
        return self.lines is None

    async def _speeches(self) -> AsyncIterator[Speech]:
        scenes, turn = self.scenes, self.turn
        limit = max(1, scenes.engine.limits.max_input_chars - PROMPT_RESERVE)
        if len(turn.text) > limit:
            raise InputTooLong(limit=limit)
        scene = self.scene or await scenes.require(turn.scope)
        if self.stored:
            await scenes.take_over(scene.scope, self._chain)
            lines = await scenes.store.lines(scene.conversation_id, scenes.engine.limits.history_messages)
        else:
            lines = self.lines
        if turn.text.strip():
            line = Line("user", turn.speaker.name, turn.text)
            if self.stored:
                await scenes.store.add_line(scene.conversation_id, line, request_key=turn.request_key)
            lines.append(line)
        try:
            async for speech in self._turns(scene, lines):
                yield speech
        finally:
            scenes.release(scene.scope, self._chain)

    async def _turns(self, scene: Scene, lines: list[Line]) -> AsyncIterator[Speech]:
        scenes, turn = self.scenes, self.turn
        present = scenes.present(scene)
        named = mentioned(turn.text, present)
        for i in range(max(scene.auto_turns, len(named), 1)):
            if self._chain.stopped or not present:
                return
            who = named[i] if i < len(named) else scenes.pick(present, lines, scene.last_speaker)
            speech = Speech(who, scenes.engine.reply(scenes.speech_turn(turn, scene, who, present, lines)),
                            continuation=i >= len(named) and i > 0, conversation_id=scene.conversation_id or None,
                            _record=lambda s: self._record(s, scene, lines))
            self._chain.current = speech
            self.speeches.append(speech)
            yield speech
            if not speech.started:
                return                      # the caller did not want it
            await speech.finished.wait()
            if speech.status != "done":
                return                      # stopped, interrupted, or failed: the scene waits for a person

    async def _record(self, speech: Speech, scene: Scene, lines: list[Line]) -> None:
        text = speech.text.strip()
        if not text:
            return
        line = Line("assistant", speech.character, speech.text)
        lines.append(line)
        scene.last_speaker = speech.character
        if self.stored:
            await self.scenes.store.add_line(scene.conversation_id, line, status=speech.status, durable=True,
                                             meta={"model": speech.reply.model})
            if self.scenes.current(scene):          # an ended or restarted scene is not brought back
                await self.scenes.save(scene)


class Scenes:
    """Every scope's scene (cached, kept in the store) and the chains of replies running in them."""

    def __init__(self, engine: "Engine", settings: SceneSettings):
        self.engine = engine
        self.settings = settings
        self.store = SceneStore(engine.store)
        self.rng = random.Random(settings.seed)
        self._cache: dict[str, Scene | None] = {}
        self._chains: dict[str, _Chain] = {}

    @property
    def registry(self):
        return self.engine.registry

    # what is where -----------------------------------------------------------------------------

    async def get(self, scope: str) -> Scene | None:
        """The scope's scene, or None (remembered, so a channel without one costs no database read)."""
        if scope not in self._cache:
            if len(self._cache) > 50_000:
                self._cache.clear()
            self._cache[scope] = await self.store.get(scope)
        return self._cache[scope]

    async def require(self, scope: str) -> Scene:
        scene = await self.get(scope)
        if scene is None:
            raise NoScene(f"no scene in {scope}")
        return scene

    def present(self, scene: Scene) -> list[str]:
        """The scene's characters that still exist (a card may have been removed meanwhile)."""
        return [c for c in scene.characters if self.registry is not None and self.registry.get(c) is not None]

    def resolve(self, names: list[str], scopes: str | list[str] | tuple[str, ...]) -> list[str]:
        """Registered names for ``names``; UnknownCharacter or CharacterNotHere for the first that fails."""
        out: list[str] = []
        for name in names:
            found = self.registry.character(name) if self.registry is not None else None
            if found is None:
                raise UnknownCharacter(f"no character {name!r}", name=name)
            if not self.registry.allowed(found.name, scopes):
                raise CharacterNotHere(f"{found.name} not allowed in {scopes}", name=found.name)
            if found.name not in out:
                out.append(found.name)
        return out

    def _check_size(self, count: int) -> None:
        if count > self.settings.max_characters:
            raise SceneFull(f"{count} characters", limit=self.settings.max_characters)

    # commands ----------------------------------------------------------------------------------

    async def start(self, scope: str, names: list[str], by: Speaker,
                    scopes: str | list[str] | tuple[str, ...] | None = None) -> tuple[Scene, list[Line]]:
        """A new scene with these characters (replacing the scope's scene); each greets, in order."""
        chosen = self.resolve(names, scopes or scope)
        if not chosen:
            raise UnknownCharacter("no characters named", name="")
        self._check_size(len(chosen))
        self.stop_replies_in(scope)
        conv = await self.store.new_conversation(scope)
        scene = Scene(scope, conv, list(chosen), auto_turns=self.settings.auto_turns, started_by=by.id)
        greetings = [self.greeting(name, by.name) for name in chosen]
        for line in greetings:
            await self.store.add_line(conv, line, meta={"greeting": True})
            scene.last_speaker = line.speaker
        await self.save(scene)
        return scene, greetings

    async def add(self, scope: str, name: str, by: Speaker,
                  scopes: str | list[str] | tuple[str, ...] | None = None) -> tuple[Scene, Line | None]:
        """Bring a character in (it greets); (scene, None) if it was already there."""
        scene = await self.require(scope)
        (found,) = self.resolve([name], scopes or scope)
        if scene.has(found):
            return scene, None
        self._check_size(len(scene.characters) + 1)
        scene.characters.append(found)
        line = self.greeting(found, by.name)
        await self.store.add_line(scene.conversation_id, line, meta={"greeting": True})
        scene.last_speaker = found
        await self.save(scene)
        return scene, line

    async def remove(self, scope: str, name: str) -> Scene:
        scene = await self.require(scope)
        kept = [c for c in scene.characters if c.casefold() != name.strip().casefold()]
        if len(kept) == len(scene.characters):
            found = self.registry.character(name) if self.registry is not None else None
            kept = [c for c in kept if found is None or c != found.name]
            if len(kept) == len(scene.characters):
                raise UnknownCharacter(f"{name!r} is not in the scene", name=name)
        scene.characters = kept
        await self.save(scene)
        return scene

    async def set_auto(self, scope: str, turns: int) -> Scene:
        scene = await self.require(scope)
        scene.auto_turns = max(0, min(int(turns), MAX_AUTO_TURNS))
        await self.save(scene)
        return scene

    async def end(self, scope: str) -> bool:
        """End the scope's scene (its conversation stays stored); False if there was none."""
        self.stop_replies_in(scope)
        ended = await self.store.end(scope)
        self._cache[scope] = None
        return ended

    def stop_replies_in(self, scope: str) -> int:
        """Stop the chain running in ``scope``: no more turns, the reply being written ends; how many stopped."""
        chain = self._chains.get(scope)
        if chain is None:
            return 0
        chain.stopped = True
        current = chain.current
        if current is not None and not current.finished.is_set() and not current.reply.halt.is_set():
            current.cancel("user")
            return 1
        return 0

    def current(self, scene: Scene) -> bool:
        """Is ``scene`` still its scope's scene (not ended or replaced meanwhile)?"""
        return self._cache.get(scene.scope) is scene

    async def save(self, scene: Scene) -> None:
        await self.store.save(scene)
        self._cache[scene.scope] = scene

    def greeting(self, name: str, user_name: str) -> Line:
        """A character's opening line in a scene: a V3 group-only greeting if it has one, else its usual one."""
        card = self.registry.get(name)
        group = [g for g in card.group_only_greetings if g.strip()]
        text = (apply_macros(self.rng.choice(group), card.display_name, user_name) if group
                else self.registry.greeting(name, user_name, self.rng))
        return Line("assistant", name, text)

    # turns -------------------------------------------------------------------------------------

    def turn(self, turn: Turn) -> SceneTurn:
        """The chain answering ``turn`` in the scene of ``turn.scope`` (NoScene when it has none)."""
        return SceneTurn(self, turn)

    def stateless(self, turn: Turn, characters: list[str], lines: list[Line]) -> SceneTurn:
        """A chain in a scene the caller keeps (e.g. an API request with its history); nothing is stored."""
        chosen = self.resolve(characters, turn.scope)
        self._check_size(len(chosen))
        last = next((ln.speaker for ln in reversed(lines) if ln.role == "assistant"), None)
        scene = Scene(turn.scope, "", chosen, auto_turns=0, last_speaker=last)
        return SceneTurn(self, turn, scene=scene, lines=list(lines))

    async def take_over(self, scope: str, chain: _Chain) -> None:
        """Make ``chain`` the scope's running chain: the previous one takes no more turns.

        A reply it drew on its own (auto mode) stops at once; a reply someone
        asked for is let finish first, so that replies never overlap in a channel.
        """
        previous = self._chains.get(scope)
        self._chains[scope] = chain
        if previous is None:
            return
        previous.stopped = True
        current = previous.current
        if current is None or current.finished.is_set():
            return
        if current.continuation:
            current.cancel("interrupted")
        if current.started:
            try:
                await asyncio.wait_for(current.finished.wait(), TAKE_OVER_WAIT_S)
            except asyncio.TimeoutError:
                log.warning("scene %s: the previous reply did not end in %.0fs", scope, TAKE_OVER_WAIT_S)

    def release(self, scope: str, chain: _Chain) -> None:
        """Forget a finished chain (a newer one may have taken its place already)."""
        if self._chains.get(scope) is chain:
            del self._chains[scope]

    def pick(self, present: list[str], lines: list[Line], last_speaker: str | None) -> str:
        """The next speaker after the last line: a character it names (not its own speaker), else a draw."""
        last = lines[-1] if lines else None
        if last is not None:
            named = [n for n in mentioned(last.content, present) if n != last.speaker]
            if named:
                return named[0]
        return draw(present, self.rng, lambda n: talkativeness(self.registry.get(n).extensions), last_speaker)

    def speech_turn(self, turn: Turn, scene: Scene, who: str, present: list[str], lines: list[Line]) -> Turn:
        """The engine turn of ``who``'s reply: its card, the others, the labelled history and the nudge."""
        card = self.registry.get(who)
        others = [self.registry.get(c) for c in present if c != who]
        user_name = next((ln.speaker for ln in reversed(lines) if ln.role == "user"), turn.speaker.name)
        sp = build_scene_prompt(card, others, lines, user_name, self.settings.nudge, self.settings.description_chars)
        return Turn(speaker=Speaker(turn.speaker.id, user_name, turn.speaker.lang), scope=scene.scope, text=sp.text,
                    mode="roleplay", character=who, remember=False, history=sp.history, params=turn.params,
                    cue=Cue(sp.context, sp.stop, prefill=f"{who}:"))
