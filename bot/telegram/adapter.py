"""The Telegram surface: runs python-telegram-bot against the configured Bot API server and journals every update."""
from __future__ import annotations

import asyncio
import collections
import logging

from telegram import BotCommand, Update
from telegram.error import BadRequest, InvalidToken, NetworkError, TelegramError
from telegram.ext import Application, ContextTypes, TypeHandler

from bot.streaming import PathClosed, RateLimited, Undeliverable
from bot.telegram.config import TelegramConfig
from bot.telegram.handlers import Handlers
from bot.journal import Entry, Journal
from bot.telegram.pacing import telegram_pacer
from bot.telegram.texts import COMMANDS
from engine.api import EngineAPI

log = logging.getLogger(__name__)

UPDATE_TYPES = [Update.MESSAGE, Update.CALLBACK_QUERY]


def _transient(e: BaseException) -> bool:
    """A Bot API server that is down or busy, as opposed to a request it refused."""
    return isinstance(e, RateLimited) or (isinstance(e, NetworkError) and not isinstance(e, BadRequest))


class TelegramSurface:
    """Start: connect (retrying with back-off while the server is down), register the command menu,
    resume updates an earlier run left unfinished, then poll (or serve the webhook).

    Every update is recorded before it is handled and marked done after its
    reply is sent, and is handled in its own task, so a long reply never holds
    up /stop or other chats.
    """

    def __init__(self, engine: EngineAPI, cfg: TelegramConfig, token: str, default_lang: str = "ko",
                 webhook_secret: str | None = None):
        self.engine, self.cfg, self.default_lang = engine, cfg, default_lang
        self.webhook_secret = webhook_secret
        self.app = (Application.builder().token(token).base_url(cfg.base_url).base_file_url(cfg.base_file_url)
                    .get_updates_read_timeout(cfg.poll_timeout_s + 10.0).build())
        # One catch-all handler instead of PTB's CommandHandler/MessageHandler routing: every update must be
        # written to the journal before anything handles it (PTB confirms updates to the server before its
        # handlers finish, so a crash would lose them), and each is then handled in its own task (Handlers).
        self.app.add_handler(TypeHandler(Update, self._on_update))
        self.app.add_error_handler(self._on_error)
        self.pacer = telegram_pacer(cfg.edit_interval_s, cfg.group_messages_per_minute, cfg.messages_per_second)
        self.journal: Journal | None = None
        self.handlers: Handlers | None = None
        self.ready = asyncio.Event()
        self._runner: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()
        self._active: set[str] = set()

    # life cycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        """Returns at once; connecting happens in the background so a server that is down stops nothing."""
        self._runner = asyncio.create_task(self._run(), name="telegram-start")
        self._runner.add_done_callback(_report_failure)

    async def _run(self) -> None:
        if not await self._connect():
            return
        bot = self.app.bot
        self.journal = Journal(self.engine, f"telegram:{bot.id}", self.cfg.max_attempts)
        self.handlers = Handlers(self.engine, self.cfg, self.default_lang, bot, self.pacer)
        await self._set_commands()
        await self.app.start()
        await self._resume()
        delay = 1.0
        while True:
            try:
                await self._start_updater()
                break
            except (TelegramError, OSError) as e:   # e.g. a server without deleteWebhook/setWebhook, a busy port
                log.error("Telegram updates could not be started (%s); retrying in %.0fs", e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.cfg.max_backoff_s)
        log.info("Telegram bot @%s (%s) is %s", bot.username, bot.id,
                 "serving its webhook" if self.cfg.mode == "webhook" else "polling")
        self.ready.set()

    async def _start_updater(self) -> None:
        if self.cfg.mode == "webhook":
            await self.app.updater.start_webhook(
                listen=self.cfg.webhook.listen, port=self.cfg.webhook.port, url_path=self.cfg.webhook.path,
                webhook_url=self.cfg.webhook.url, secret_token=self.webhook_secret, allowed_updates=UPDATE_TYPES,
                bootstrap_retries=-1)
        else:
            await self.app.updater.start_polling(
                timeout=self.cfg.poll_timeout_s, bootstrap_retries=-1, allowed_updates=UPDATE_TYPES,
                error_callback=lambda e: log.warning("getUpdates failed (retrying with back-off): %s", e))

    async def _connect(self) -> bool:
        """getMe until the server answers, waiting longer each time (at most ``max_backoff_s``)."""
        delay = 0.5
        while True:
            try:
                await self.app.initialize()
                return True
            except InvalidToken as e:
                log.error("Telegram refused the token (%s); the Telegram adapter stays off", e)
                return False
            except TelegramError as e:
                log.warning("Telegram Bot API server unreachable (%s); retrying in %.1fs", e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.cfg.max_backoff_s)

    async def _set_commands(self) -> None:
        for lang, commands in COMMANDS.items():
            menu = [BotCommand(c, d) for c, d in commands]
            try:
                await self.app.bot.set_my_commands(menu, language_code=lang)
                if lang == self.default_lang:
                    await self.app.bot.set_my_commands(menu)
            except TelegramError as e:
                log.warning("setMyCommands (%s) failed: %s", lang, e)

    async def stop(self) -> None:
        """Stop fetching; replies in flight get ``stop_grace_s`` to finish, then are stopped as by /stop.

        Updates whose handling is still cut off (a crash, a hung call) stay in
        the journal and are resumed at the next start.
        """
        if self._runner and not self._runner.done():
            self._runner.cancel()
            await asyncio.gather(self._runner, return_exceptions=True)
        updater = self.app.updater
        if updater is not None and updater.running:
            await updater.stop()
        if self.app.running:
            await self.app.stop()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=self.cfg.stop_grace_s)
        if self._tasks and self.handlers and self.handlers.interrupt():
            # Cut off like /stop: the user sees the text so far and a notice, and the update is done. A
            # task cancelled mid-reply would instead be resumed from the engine's stored partial reply.
            await asyncio.wait(set(self._tasks), timeout=5.0)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        try:
            await self.app.shutdown()
        except (TelegramError, RuntimeError) as e:
            log.info("Telegram shutdown: %s", e)

    # updates ------------------------------------------------------------------------------------

    async def _on_update(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        if not isinstance(update, Update) or self.journal is None:
            return
        if self.journal.key(update.update_id) in self._active:
            return
        entry = await self.journal.record(update.update_id, update.to_dict())
        if entry is not None:
            self._spawn(self._handle, entry, update)

    async def _on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        log.error("error while handling a Telegram update: %s", context.error, exc_info=context.error)

    def _spawn(self, fn, *args) -> None:
        task = asyncio.create_task(fn(*args))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resume(self) -> None:
        """Handle again what an earlier run recorded but did not finish, in order within each chat."""
        try:
            pending = await self.journal.pending()
        except Exception as e:  # noqa: BLE001 - the store may be down; new updates still get answers
            log.error("unfinished Telegram updates not resumed: %s", e)
            return
        by_chat: dict[int, list[tuple[Entry, Update]]] = collections.defaultdict(list)
        for entry, payload in pending:
            update = Update.de_json(payload, self.app.bot)
            chat = update.effective_chat
            by_chat[chat.id if chat else 0].append((entry, update))
            self._active.add(entry.key)
        if pending:
            log.info("resuming %d unfinished Telegram update(s)", len(pending))
        for items in by_chat.values():
            self._spawn(self._handle_in_order, items)

    async def _handle_in_order(self, items: list[tuple[Entry, Update]]) -> None:
        for entry, update in items:
            await self._handle(entry, update)

    async def _handle(self, entry: Entry, update: Update) -> None:
        """Handle one update and mark it done; a server outage is retried with back-off, the update kept."""
        self._active.add(entry.key)
        delay = 1.0
        try:
            for attempt in range(1, self.cfg.max_attempts + 1):
                try:
                    outcome = await self.handlers.handle(update, entry)
                except (PathClosed, Undeliverable) as e:
                    # Blocked or removed (403): nothing can reach this chat; the reply stays stored, not retried.
                    log.warning("update %s: Telegram refused every way to the chat (%s); not retried", entry.key, e)
                    outcome = "undeliverable"
                except Exception as e:  # noqa: BLE001 - one bad update must not stop the bot
                    if _transient(e) and attempt < self.cfg.max_attempts:
                        log.warning("update %s: Telegram unreachable (%s); trying again in %.0fs", entry.key, e, delay)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, self.cfg.max_backoff_s)
                        continue
                    log.exception("update %s failed", entry.key)
                    outcome = "error"
                    await self.handlers.apologize(update, entry, e)
                await self.journal.done(entry, outcome)
                return
        finally:
            self._active.discard(entry.key)


def _report_failure(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("the Telegram adapter failed to start", exc_info=task.exception())


def make_surface(engine: EngineAPI, loaded) -> TelegramSurface:
    cfg: TelegramConfig = loaded.config.telegram
    return TelegramSurface(engine, cfg, loaded.secrets.telegram_token, loaded.config.language.default,
                           webhook_secret=loaded.secrets.get(cfg.webhook.secret_token_env))
