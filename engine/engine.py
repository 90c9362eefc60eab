"""The engine: owns the models, the store and the characters; implements the EngineAPI (engine/api.py)."""
from __future__ import annotations

import asyncio
import collections
import logging
import math
import random
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, AsyncIterator

from engine.api import ModelLimits
from engine.backends.base import BatchStats, Sampling, TextGenerator
from engine.backends.beam import Beams, BeamSearch
from engine.backends.openai_backend import MESSAGES_MARK
from engine.cards import CharacterRegistry, build_roleplay_parts, card_to_dict, card_to_png, load_card
from engine.cards.macros import apply_macros
from engine.cleaning import StreamCleaner
from engine.complexity import Classifier, make_classifier, max_new_tokens
from engine.errors import (BeamSearchUnavailable, EmptyReply, EngineError, GenerationCancelled, InputTooLong,
                           PromptTooLong, RateLimitedUser, UnknownCharacter, UserBusy)
from engine.memory import ConversationMemory, Recall
from engine.observe import EngineMetrics, NoMetrics
from engine.prompts import Block, PromptParts, fit
from engine.scenes import Scenes, SceneTurn
from engine.scheduler import ModelQueue, Stats
from engine.settings import Memory, SceneSettings
from engine.store.journal import Journal
from engine.store.repository import Store, new_id
from engine.types import Turn

log = logging.getLogger(__name__)
MIN_NEW_TOKENS = 16     # a prompt that leaves less room than this for the reply is refused (PromptTooLong)


@dataclass
class Model:
    """One loaded model with its settings, queue and length classifier."""

    role: str
    cfg: object
    backend: TextGenerator
    queue: ModelQueue
    classifier: Classifier

    def count(self, messages: list[dict[str, str]]) -> int:
        return self.backend.count_tokens(self.backend.render(messages))


@dataclass(eq=False)
class Reply:
    """One reply being written (a ReplyStream). Iterate it once for text pieces; ``text`` is their concatenation."""

    engine: "Engine"
    turn: Turn
    text: str = ""
    status: str = "new"               # new | queued | running | done | cancelled | error
    conversation_id: str | None = None
    model: str | None = None
    stats: Stats = field(default_factory=Stats)
    halt: threading.Event = field(default_factory=threading.Event)   # seen by the generating thread
    stop_reason: str | None = None    # "user" (/stop), "shutdown"; None while not stopped
    prompt: str = ""                  # the rendered prompt, for tests and debugging
    prompt_s: float = 0.0             # reading the memory, storing the message, building and fitting the prompt
    out_of_window: list[dict] = field(default_factory=list)   # stored messages the prompt left out
    message_id: str | None = None     # the stored reply's id once its progress was written
    saved_at: float = 0.0             # monotonic time of the last progress write
    _started: bool = False

    def __aiter__(self) -> AsyncIterator[str]:
        if self._started:
            # A second pass would generate (and store) a second reply to the same message.
            raise RuntimeError("a reply can be iterated only once; read .text for what it wrote")
        self._started = True
        return self.engine._run(self)

    def cancel(self, reason: str = "user") -> None:
        """End the reply within one token; it then raises GenerationCancelled after its partial text."""
        self.stop_reason = self.stop_reason or reason
        self.halt.set()
        self.engine.gate.wake()


class _UserGate:
    """Per-user in-flight and per-minute limits; a waiting reply wakes when a slot frees or it is cancelled."""

    def __init__(self, per_user: int, policy: str, per_minute: int):
        self.per_user, self.policy, self.per_minute = per_user, policy, per_minute
        self.inflight: dict[str, list[Reply]] = collections.defaultdict(list)
        self.recent: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self._changed = asyncio.Condition()
        self._wakers: set[asyncio.Task] = set()

    async def enter(self, reply: Reply) -> None:
        uid = reply.turn.speaker.id
        if self.per_minute:
            now, window = time.monotonic(), self.recent[uid]
            while window and now - window[0] > 60:
                window.popleft()
            if len(window) >= self.per_minute:
                raise RateLimitedUser(seconds=int(61 - (now - window[0])))
            window.append(now)
        async with self._changed:
            while len(self.inflight[uid]) >= self.per_user:
                if self.policy == "refuse":
                    raise UserBusy(f"{uid} has {len(self.inflight[uid])} in flight")
                if reply.halt.is_set():
                    raise GenerationCancelled("stopped while waiting")
                await self._changed.wait()
            self.inflight[uid].append(reply)

    async def leave(self, reply: Reply) -> None:
        uid = reply.turn.speaker.id
        if reply in self.inflight.get(uid, []):
            self.inflight[uid].remove(reply)
            if not self.inflight[uid]:
                del self.inflight[uid]
        await self._notify()

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    def wake(self) -> None:
        """Let waiting replies look again (one of them may have been cancelled); safe outside a loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return                  # no loop: nobody can be waiting
        task = loop.create_task(self._notify())
        self._wakers.add(task)
        task.add_done_callback(self._wakers.discard)

    def of(self, uid: str) -> list[Reply]:
        return list(self.inflight.get(uid, []))


class _NoCharacters:
    """The character view of an engine built without characters: nothing on offer."""

    def names(self) -> list[str]:
        return []

    def entries(self) -> list:
        return []

    def character(self, name: str) -> None:
        return None

    def get(self, name: str) -> None:
        return None

    def allowed(self, name: str, scope) -> bool:
        return False

    def greeting(self, name: str, user_name: str, rng=None, *, group: bool = False) -> str:
        raise UnknownCharacter(f"no character named {name!r}", name=name)


class Engine:
    """The engine behind the EngineAPI (engine/api.py): models, store and characters, one reply path.

    Surfaces call only the EngineAPI methods; ``models``, ``store`` and
    ``registry`` are the engine's own parts (tests and the engine read them).
    """

    def __init__(self, *, models: dict[str, Model], store: Store, limits, cards_cfg, characters=None,
                 metrics: EngineMetrics | None = None, on_close=(), memory_cfg: Memory | None = None,
                 scenes_cfg: SceneSettings | None = None):
        self.models = models
        self.store = store
        self.memory = ConversationMemory(memory_cfg or Memory(), store)
        self.limits = limits
        self.cards_cfg = cards_cfg
        self.registry: CharacterRegistry | None = characters
        self.metrics = metrics or NoMetrics()
        self.gate = _UserGate(limits.per_user_in_flight, limits.busy_policy, limits.requests_per_minute)
        self._on_close = list(on_close)
        self._replies: set[Reply] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self.scenes = Scenes(self, scenes_cfg or SceneSettings())

    # construction ----------------------------------------------------------------------------

    @staticmethod
    def make_model(role: str, cfg, backend: TextGenerator, base_dir: Path | None = None) -> Model:
        queue = ModelQueue(role, backend, cfg.concurrency, cfg.queue_limit, cfg.timeout_s)
        classifier = make_classifier(cfg.max_new_tokens, base_dir, f"models.{role}.max_new_tokens")
        return Model(role, cfg, backend, queue, classifier)

    # replies ------------------------------------------------------------------------------------

    def reply(self, turn: Turn) -> Reply:
        """A reply to ``turn``; nothing happens until it is iterated (once)."""
        return Reply(self, turn)

    async def stop_replies_of(self, speaker_id: str) -> int:
        """Cancel the speaker's replies in progress (queued or generating); how many."""
        replies = self.gate.of(speaker_id)
        for r in replies:
            r.cancel("user")
        return len(replies)

    # conversations -----------------------------------------------------------------------------

    async def reset(self, owner: str, scope: str) -> int:
        """Start new conversations for the owner in this scope, and end its scene; old ones stay stored."""
        ended = await self.scenes.end(scope)
        return await self.store.reset(owner, scope) + int(ended)

    # scenes: several characters in one scope (engine/scenes) -------------------------------------

    async def scene(self, scope: str):
        """The scope's scene, or None."""
        return await self.scenes.get(scope)

    async def start_scene(self, scope: str, names: list[str], by, scopes=None):
        """A new scene with these characters (replacing the scope's); (scene, their greetings)."""
        return await self.scenes.start(scope, names, by, scopes)

    async def add_to_scene(self, scope: str, name: str, by, scopes=None):
        """(scene, the greeting of the character that joined, or None if it was there)."""
        return await self.scenes.add(scope, name, by, scopes)

    async def remove_from_scene(self, scope: str, name: str):
        return await self.scenes.remove(scope, name)

    async def set_scene_auto(self, scope: str, turns: int):
        """Character turns after each human message (0: only the characters asked answer)."""
        return await self.scenes.set_auto(scope, turns)

    async def end_scene(self, scope: str) -> bool:
        return await self.scenes.end(scope)

    def stop_scene_replies(self, scope: str) -> int:
        """Stop the scope's chain of character replies (no more turns; the one being written ends)."""
        return self.scenes.stop_replies_in(scope)

    def scene_turn(self, turn: Turn) -> SceneTurn:
        """The characters of ``turn.scope``'s scene answering ``turn`` (see engine.scenes.SceneTurn)."""
        return self.scenes.turn(turn)

    def kept_scene_turn(self, turn: Turn, characters: list[str], lines) -> SceneTurn:
        """The same in a scene the caller keeps (an API request with its history); nothing is stored."""
        return self.scenes.stateless(turn, characters, lines)

    async def history(self, conversation_id: str, limit: int = 100) -> list[dict]:
        return await self.store.recent_messages(conversation_id, limit)

    async def conversation(self, conversation_id: str) -> dict | None:
        return await self.store.get_conversation(conversation_id)

    async def conversations_of(self, owner: str, limit: int = 50) -> list[dict]:
        return await self.store.conversations_of(owner, limit)

    async def active_conversation(self, owner: str, scope: str, mode: str, character: str | None = None) -> str:
        """The owner's active conversation in a scope (created if none), e.g. one a whole group shares."""
        return await self.store.active_conversation(owner, scope, mode, character if mode == "roleplay" else None)

    async def conversation_for(self, turn: Turn) -> str:
        """The conversation a turn continues (created if none is active)."""
        if turn.conversation_id:
            return turn.conversation_id
        character = turn.character or (turn.card.name if turn.card is not None else None)
        return await self.active_conversation(turn.speaker.id, turn.scope, turn.mode, character)

    async def link_message(self, key: str, conversation_id: str) -> None:
        """Remember which conversation a platform message belongs to (reply chains)."""
        await self.store.link(key, conversation_id)

    async def linked_conversation(self, key: str) -> str | None:
        return await self.store.linked(key)

    # memory beyond the window: summary and pinned facts -----------------------------------------

    async def memory_of(self, conversation_id: str) -> dict:
        """``{"summary": {"text", "revision", "by", "ts", "covers"} | None, "pins": [{"n", "id", "text", "ts"}]}``."""
        return await self.memory.show(conversation_id)

    async def pin_fact(self, conversation_id: str, text: str, by: str) -> dict:
        """Pin a fact to every prompt of the conversation (PinRejected: empty, too long, no room); the memory."""
        return await self.memory.pin(conversation_id, text, by, await self._model_of_conversation(conversation_id))

    async def unpin_fact(self, conversation_id: str, n: int) -> str:
        """Unpin fact number ``n`` (1 = oldest; UnknownPin otherwise); its text."""
        return await self.memory.unpin(conversation_id, n)

    async def edit_summary(self, conversation_id: str, text: str, by: str) -> dict:
        """Replace the summary's text (a new revision covering the same messages); the memory."""
        return await self.memory.edit_summary(conversation_id, text, by)

    async def forget(self, conversation_id: str, by: str) -> None:
        """Clear the summary and the pins; the messages stay stored."""
        await self.memory.forget(conversation_id, by)

    async def _model_of_conversation(self, conversation_id: str) -> Model:
        conv = await self.store.get_conversation(conversation_id) or {}
        if conv.get("mode") != "roleplay":
            return self.models["chat"]
        found = self.registry.character(conv["character"]) if (conv.get("character") and self.registry) else None
        return self.models[found.model if found else "roleplay"]

    # preferences ---------------------------------------------------------------------------------

    async def preference(self, owner: str, key: str) -> Any:
        return await self.store.get_pref(owner, key)

    async def set_preference(self, owner: str, key: str, value: Any) -> None:
        """Keep a preference; None forgets it."""
        await self.store.set_pref(owner, key, value)

    async def active_character(self, owner: str, scope: str) -> str | None:
        """The character the owner chose for a scope, or None (plain chat)."""
        return await self.preference(owner, f"character|{scope}")

    async def set_active_character(self, owner: str, scope: str, name: str | None) -> None:
        await self.set_preference(owner, f"character|{scope}", name)

    async def language(self, user_id: str) -> str | None:
        """The language a user chose (/lang), or None."""
        return await self.preference(user_id, "lang")

    async def set_language(self, user_id: str, lang: str | None) -> None:
        await self.set_preference(user_id, "lang", lang)

    # characters ---------------------------------------------------------------------------------

    def characters(self):
        """A read-only view of the characters on offer."""
        return self.registry if self.registry is not None else _NoCharacters()

    def card_limits(self):
        """Size limits for card files (a surface checks them before downloading one)."""
        return self.cards_cfg.limits

    async def watch_characters(self, reload) -> None:
        """Follow changes to card files and (through ``reload``) bot.yaml until cancelled."""
        if self.registry is not None:
            await self.registry.watch(reload)

    async def import_card(self, data: bytes, by: str):
        """Validate a card (PNG or JSON), keep it in the store, offer it on every surface at once; its Character.

        Raises CardError (a bad card) or StoreUnavailable; nothing is offered unless it was stored.
        """
        card = load_card(data, self.cards_cfg.limits)
        blob = card_to_png(card, card.image, self.cards_cfg.limits)
        await self.store.save_character(card.display_name, card_to_dict(card), blob, by)
        return self.registry.add_imported(load_card(blob, self.cards_cfg.limits))

    # models and operations ----------------------------------------------------------------------

    def model_limits(self, role: str) -> ModelLimits:
        model = self.models[role]
        most = model.cfg.max_new_tokens
        return ModelLimits(role=role, n_ctx=model.backend.n_ctx, stop=tuple(model.cfg.stop),
                           max_new_tokens=most.fixed if most.policy == "fixed" else most.high)

    def model_info(self) -> dict[str, dict]:
        return {role: m.backend.info() for role, m in self.models.items()}

    def batch_stats(self) -> dict[str, BatchStats]:
        """What each model's batch holds now (running sequences, KV cells, prompt-cache hits)."""
        return {role: m.backend.batch_stats() for role, m in self.models.items()}

    async def database_names(self, all_databases: bool = False) -> list[str]:
        """The bot's own database (once it exists), or with ``all_databases`` every one on the server."""
        names = await self.store.database_names()
        return names if all_databases else [n for n in names if n == self.store.db.name]

    async def collection_names(self, db_name: str, all_databases: bool = False) -> list[str] | None:
        """A database's collections; None for one that does not exist or (without ``all_databases``) is not ours."""
        if not all_databases and db_name != self.store.db.name:
            return None
        return await self.store.collection_names(db_name)

    def platform_store(self, name: str) -> Journal:
        """A surface's own journal of received events, kept apart from every other surface's."""
        return Journal(self.store, name)

    # the reply path ------------------------------------------------------------------------------

    async def _run(self, reply: Reply) -> AsyncIterator[str]:
        """Answer one turn, in named steps:

        1. gate: check the input, pick card and model, wait for the user's slot;
        2. replay: a request already answered (same request key) gets that answer;
        3. remember: note the user, read the memory (summary, pins, the window's messages), store the
           user's message;
        4. prompt: sampling settings and the prompt fitted to the context, summary and pins included;
        5. generate: raw pieces from the model's queue (a summary being written gives way);
        6. clean: stop strings and stray marks removed as pieces stream;
        7. store: the reply (a partial one too, with its status) is kept; what the prompt left out is
           folded into the summary in the background once there is enough of it.
        """
        turn = reply.turn
        card, model = await self._gate(reply)
        error: str | None = None
        replayed = False
        self.metrics.reply_started(model.role)
        try:
            done = await self._replay(reply)
            if done is not None:
                replayed = True
                yield done
                return
            t_prompt = time.perf_counter()
            recall, history, docs = await self._remember(reply, card)
            prompt, sampling = self._prompt(reply, model, card, history, recall, docs)
            reply.prompt_s = time.perf_counter() - t_prompt
            # A scene labels lines with the name people see, so that is the prefix a reply may open with.
            shown = (card.display_name if reply.turn.cue else card.name) if card else ""
            cleaner = StreamCleaner(model.cfg.clean, sampling.stop, shown)
            async for out in self._clean(reply, cleaner, self._generate(reply, model, prompt, sampling)):
                yield out
            if reply.stop_reason:
                raise GenerationCancelled(f"stopped ({reply.stop_reason})")
            if not reply.text.strip():
                raise EmptyReply("the model produced no text")
            reply.status = "done"
        except EngineError as e:
            error = e.code
            reply.status = "cancelled" if isinstance(e, GenerationCancelled) else "error"
            raise
        except BaseException:
            error = "cancelled"
            reply.status = "cancelled"
            reply.halt.set()
            raise
        finally:
            await self._leave(reply, model, error)
            if turn.remember and reply.conversation_id and reply.text.strip() and not replayed:
                await self._store(reply, model)
                self._fold_later(reply, model, card)

    async def _gate(self, reply: Reply) -> tuple[object, Model]:
        turn = reply.turn
        if len(turn.text) > self.limits.max_input_chars:
            raise InputTooLong(limit=self.limits.max_input_chars)
        card = self._card_for(turn)
        model = self._model_for(turn)
        self._beam_search(model, turn)            # refuse an impossible beam setting before anything is stored
        reply.model = model.role
        await self.gate.enter(reply)
        self._replies.add(reply)
        self._idle.clear()
        return card, model

    async def _leave(self, reply: Reply, model: Model, error: str | None) -> None:
        await self.gate.leave(reply)
        self._replies.discard(reply)
        if not self._replies:
            self._idle.set()
        self.metrics.queue_depth(model.role, model.queue.depth)
        self.metrics.reply_finished(model.role, tokens=reply.stats.finish.tokens if reply.stats.finish else 0,
                                    gen_s=reply.stats.gen_s, ttft_s=reply.stats.ttft_s, error=error)

    async def _replay(self, reply: Reply) -> str | None:
        """The stored answer to a request seen before (then nothing is generated), else None."""
        turn = reply.turn
        if not turn.remember:
            return None
        reply.conversation_id = await self.conversation_for(turn)
        if turn.request_key:
            done = await self.store.find_reply(reply.conversation_id, turn.request_key)
            if done:
                reply.text, reply.status = done["content"], "done"
                return done["content"]
        await self.store.touch_user(turn.speaker.id, turn.speaker.name, turn.speaker.lang)
        return None

    async def _remember(self, reply: Reply, card) -> tuple[Recall | None, list[dict], list[dict]]:
        """The conversation's summary and pins, the window's candidate messages and their stored documents."""
        recall = await self.memory.recall(reply.conversation_id) if reply.turn.remember else None
        history, docs = await self._history(reply, card, recall)
        if reply.turn.remember:
            await self.store.add_message(reply.conversation_id, "user", reply.turn.text,
                                         request_key=reply.turn.request_key)
        return recall, history, docs

    def _prompt(self, reply: Reply, model: Model, card, history: list[dict], recall: Recall | None,
                docs: list[dict]) -> tuple[str, Sampling]:
        sampling = self._sampling(model, reply.turn, card)
        parts = self._parts(model, reply.turn, card, history)
        if recall:
            parts.blocks += self.memory.blocks(recall, model, reply.turn.mode)
        budget = model.backend.n_ctx - sampling.max_new_tokens
        messages = fit(parts, model.count, budget)
        reply.out_of_window = self.memory.out_of_window(docs, history, messages)
        prompt = model.backend.render(messages)
        cue = reply.turn.cue
        if cue and cue.prefill and not prompt.startswith(MESSAGES_MARK):
            prompt += cue.prefill           # a server that applies its own template gets messages instead
        reply.prompt = prompt
        # fit drops memory and optional blocks but keeps the system text and the message. When those
        # leave less room than asked for, the reply gets the room left; when they leave (almost) none,
        # refuse rather than let the backend fail or prefill past its window.
        tokens = model.backend.count_tokens(reply.prompt)
        room = model.backend.n_ctx - tokens
        least = min(sampling.max_new_tokens, MIN_NEW_TOKENS)
        if room < least:
            limit = model.backend.n_ctx - least
            raise PromptTooLong(f"{tokens} prompt tokens, at most {limit}", limit=limit, tokens=tokens)
        if room < sampling.max_new_tokens:
            sampling = replace(sampling, max_new_tokens=room)
        return reply.prompt, sampling

    async def _generate(self, reply: Reply, model: Model, prompt: str, sampling: Sampling) -> AsyncIterator[str]:
        reply.status = "queued"
        self.metrics.queue_depth(model.role, model.queue.depth + 1)
        self.memory.yield_to(model)          # a summary being written gives its slot to this reply
        beams = self._beam_search(model, reply.turn)
        # A low-priority turn (the HTTP surfaces) may not take the last places of the queue.
        reserved = math.ceil(model.queue.queue_limit * self.limits.reserved_queue_share) \
            if reply.turn.low_priority else 0
        async for raw in model.queue.stream(prompt, sampling, reply.halt, reply.stats,
                                            beams.generate if beams else None, reserved=reserved,
                                            max_wait_s=reply.turn.max_wait_s):
            reply.status = "running"
            yield raw

    async def _clean(self, reply: Reply, cleaner: StreamCleaner, raw: AsyncIterator[str]) -> AsyncIterator[str]:
        async for piece in raw:
            out = cleaner.feed(piece)
            if out:
                reply.text += out
                await self._save_progress(reply)
                yield out
            if cleaner.stopped and not reply.halt.is_set():
                # Let the model see it within one token and drain, so its slot is free when we return.
                reply.halt.set()
        if cleaner.stopped and reply.stats.finish is not None:
            reply.stats.finish.reason = "stop"
        tail = cleaner.finish()
        if tail:
            reply.text += tail
            yield tail

    async def _save_progress(self, reply: Reply) -> None:
        """Every ``limits.progress_interval_s`` the text so far is stored as ``status: "partial"``, so a reply
        whose process is killed is kept and marked (never taken for a complete one); the end replaces it."""
        interval = self.limits.progress_interval_s
        now = time.monotonic()
        if not (reply.turn.remember and reply.conversation_id and interval) or now - reply.saved_at < interval:
            return
        if reply.saved_at == 0.0:
            reply.saved_at = now        # the first piece starts the clock: short replies are written once
            return
        reply.saved_at = now
        reply.message_id = reply.message_id or new_id()
        try:
            await self.store.add_message(reply.conversation_id, "assistant", reply.text,
                                         request_key=reply.turn.request_key, status="partial",
                                         meta={"model": reply.model}, message_id=reply.message_id)
        except EngineError as e:        # the final write is durable; a missed progress write is not fatal
            log.warning("progress of a reply not stored: %s", e.detail)

    async def _store(self, reply: Reply, model: Model) -> None:
        # Partial replies (stopped, timed out) are kept too, marked with their status.
        await self.store.add_message(
            reply.conversation_id, "assistant", reply.text, request_key=reply.turn.request_key,
            status=reply.status, meta={"model": model.role}, durable=True, message_id=reply.message_id)

    def _fold_later(self, reply: Reply, model: Model, card) -> None:
        """Fold what this prompt left out into the summary, in the background, once there is enough of it."""
        if reply.status != "done" or not reply.out_of_window:
            return
        writer = model if self.memory.cfg.summarize_model == "roleplay" else self.models["chat"]
        self.memory.after_reply(reply.conversation_id, reply.out_of_window, model, writer, reply.turn.speaker.name,
                                card.display_name if card else None)

    def _card_for(self, turn: Turn):
        if turn.mode != "roleplay":
            return None
        if turn.card is not None:
            return turn.card
        card = self.registry.get(turn.character) if (self.registry and turn.character) else None
        if card is None:
            raise UnknownCharacter(f"no character {turn.character!r}")
        return card

    def _model_for(self, turn: Turn) -> Model:
        if turn.mode == "chat":
            return self.models["chat"]
        found = self.registry.character(turn.character) if (turn.character and self.registry) else None
        return self.models[found.model if found else "roleplay"]

    def _sampling(self, model: Model, turn: Turn, card) -> Sampling:
        cfg, p = model.cfg, turn.params
        stop = tuple(p.stop if p.stop is not None else cfg.stop)
        user = turn.speaker.name
        stop = tuple(s.replace("{{user}}", user).replace("{{char}}", card.name if card else "") for s in stop)
        stop += turn.cue.stop if turn.cue else ()
        return Sampling(
            max_new_tokens=p.max_new_tokens or max_new_tokens(cfg.max_new_tokens, model.classifier, turn.text),
            temperature=cfg.temperature if p.temperature is None else p.temperature,
            top_p=cfg.top_p if p.top_p is None else p.top_p,
            top_k=cfg.top_k if p.top_k is None else p.top_k,
            repetition_penalty=cfg.repetition_penalty if p.repetition_penalty is None else p.repetition_penalty,
            stop=stop,
            seed=cfg.seed,
        )

    @staticmethod
    def _beam_search(model: Model, turn: Turn) -> BeamSearch | None:
        """Beam search when the turn allows it and the width is over 1; None: sample as usual."""
        p, cfg = turn.params, model.cfg
        width = p.num_beams if p.num_beams is not None else (getattr(cfg, "num_beams", 1) if p.whole_reply else 1)
        if width <= 1:
            return None
        if not BeamSearch.supported(model.backend):
            raise BeamSearchUnavailable(f"{model.role}: {type(model.backend).__name__} has no beam search")
        return BeamSearch(model.backend, Beams(width, getattr(cfg, "early_stopping", False)))

    def _parts(self, model: Model, turn: Turn, card, history: list[dict]) -> PromptParts:
        if card is None:
            return PromptParts(system=turn.system or model.cfg.system_prompt, user=turn.text, history=history)
        parts = build_roleplay_parts(card, turn.speaker.name, history, turn.text, self.cards_cfg.roleplay_prompt,
                                     count_tokens=model.backend.count_tokens, budget=model.backend.n_ctx)
        if turn.cue and turn.cue.context:
            parts.blocks.append(Block(turn.cue.context))
        return parts

    def _greeting(self, card, turn: Turn) -> str:
        # A client that keeps the history itself is greeted the same way every turn (one choice per user);
        # a stored conversation keeps the greeting it opened with.
        rng = random.Random(turn.speaker.id) if turn.history is not None else random.Random()
        if turn.character and self.registry:
            return self.registry.greeting(turn.character, turn.speaker.name, rng)
        choices = card.greetings()
        return apply_macros(rng.choice(choices), card.display_name, turn.speaker.name) if choices else ""

    @staticmethod
    def _opens_with_greeting(turn: Turn, history: list[dict]) -> bool:
        """A new roleplay opens with the greeting; so does a client's own history that starts with the user's
        message, as the first turn was answered after it (a history that starts with a reply has its own).
        A scene's turns bring their whole history."""
        if not history:
            return True
        return turn.history is not None and turn.cue is None and history[0]["role"] == "user"

    async def _history(self, reply: Reply, card, recall: Recall | None) -> tuple[list[dict], list[dict]]:
        """The window's candidates: stored messages after the summary's cover (or the turn's explicit history),
        and the stored documents they came from; a new roleplay opens with the greeting."""
        turn = reply.turn
        history, docs = list(turn.history or []), []
        if turn.remember and turn.history is None:
            docs = await self.store.recent_messages(reply.conversation_id, self.limits.history_messages,
                                                    after_ts=recall.after_ts if recall else None)
            docs = [d for d in docs if d["role"] in ("user", "assistant")
                    and not (turn.request_key and d.get("request_key") == turn.request_key)]
            history = [{"role": d["role"], "content": d["content"]} for d in docs]
        if card is not None and self._opens_with_greeting(turn, history) and not (recall and recall.summary):
            greeting = self._greeting(card, turn)
            if greeting:
                history = [{"role": "assistant", "content": greeting}, *history]
                if turn.remember and len(history) == 1:     # a stored conversation opens with it
                    await self.store.add_message(reply.conversation_id, "assistant", greeting, meta={"greeting": True})
        return history, docs

    # life cycle ---------------------------------------------------------------------------------

    async def health(self) -> dict:
        store_ok = await self.store.ping()
        return {
            "models": {role: m.backend.info() | {"queue": m.queue.depth} for role, m in self.models.items()},
            "store": {"ok": store_ok, "pending_writes": self.store.pending_writes},
        }

    async def _until_idle(self, timeout: float) -> None:
        try:
            await asyncio.wait_for(self._idle.wait(), max(timeout, 0.0))
        except asyncio.TimeoutError:
            pass

    async def close(self, grace_s: float = 10.0) -> None:
        """Let replies in flight finish for ``grace_s``, cancel the rest, then release models and store."""
        await self._until_idle(grace_s)
        for r in list(self._replies):
            r.cancel("shutdown")
        await self._until_idle(5.0)
        await self.memory.close()
        for m in {id(m): m for m in self.models.values()}.values():     # chat and roleplay may share one
            await asyncio.to_thread(m.queue.close)
            m.backend.close()
        await self.store.close()
        for fn in self._on_close:
            await fn()


async def build_engine(*, models_cfg, mongo_cfg, limits, cards_cfg, character_entries, mongo_uri: str | None,
                       data_dir: Path, base_dir: Path, cache_dir: Path, metrics: EngineMetrics | None = None,
                       config_file: Path | None = None, env: dict[str, str] | None = None,
                       memory_cfg: Memory | None = None, scenes_cfg: SceneSettings | None = None) -> Engine:
    """Start the store (embedded server if no URI), load both models, load the characters."""
    from engine.loading import load_backend
    from engine.store.embedded import EmbeddedMongo

    on_close = []
    if mongo_uri is None:
        if not mongo_cfg.embedded.enabled:
            raise RuntimeError("no MONGO_URI is set and mongo.embedded.enabled is false")
        server = EmbeddedMongo(data_dir / "mongo", mongo_cfg.embedded.port, mongo_cfg.embedded.start_timeout_s)
        await server.start()
        on_close.append(server.stop)
        mongo_uri = server.uri
    try:
        store = Store(mongo_uri, mongo_cfg.database, mongo_cfg.server_selection_timeout_ms,
                      outbox_path=data_dir / f"outbox-{mongo_cfg.database}.jsonl")
        await store.start()
        models: dict[str, Model] = {}
        for role in ("chat", "roleplay"):
            cfg = getattr(models_cfg, role)
            if role == "roleplay" and cfg == models_cfg.chat:
                # One model object, one queue: a llama.cpp instance must not run two generations at once.
                models[role] = models["chat"]
                continue
            t0 = time.perf_counter()
            backend = await asyncio.to_thread(load_backend, role, cfg, base_dir, cache_dir, env)
            log.info("%s model loaded in %.1fs: %s", role, time.perf_counter() - t0, backend.info())
            models[role] = Engine.make_model(role, cfg, backend, base_dir)
        characters = CharacterRegistry(cards_cfg, character_entries, base_dir, config_file=config_file)
        for doc in await _stored_cards(store):
            try:
                characters.add_imported(load_card(doc["image"], cards_cfg.limits))
            except EngineError as e:
                log.error("stored character %r not loaded: %s", doc.get("name"), e.detail)
    except BaseException:
        for fn in on_close:
            await fn()
        raise
    return Engine(models=models, store=store, limits=limits, cards_cfg=cards_cfg, characters=characters,
                  metrics=metrics, on_close=on_close, memory_cfg=memory_cfg, scenes_cfg=scenes_cfg)


async def _stored_cards(store: Store) -> list[dict]:
    try:
        return await store.list_characters()
    except EngineError as e:
        log.error("imported characters not loaded: %s", e.detail)
        return []
