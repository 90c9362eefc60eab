"""The Discord surface: a discord.py client with the slash commands and message handlers, started by bot.app."""
from __future__ import annotations

import asyncio
import logging

import aiohttp
import discord
import yarl

from bot.discord.access import Access
from bot.discord.commands import Commands
from bot.discord.config import DiscordConfig
from bot.discord.conversation import Conversations
from bot.discord.messages import Messages, Seen
from bot.discord.personas import Personas
from bot.discord.transports import Counters
from bot.discord.translator import Translator
from bot.journal import Journal
from engine.api import EngineAPI

log = logging.getLogger(__name__)


def point_discord_at(cfg: DiscordConfig) -> None:
    """Send REST calls to ``api_base_url`` and connect the gateway to ``gateway_url``.

    discord.py reads both from class attributes (``Route.BASE`` for every REST
    call, interaction webhooks included; ``DiscordWebSocket.DEFAULT_GATEWAY``
    for the first connection) and has no per-client option, so they are set
    here, process-wide, before the client logs in. One process runs one
    Discord bot, so nothing else shares them.
    """
    discord.http.Route.BASE = cfg.api_base_url.rstrip("/")
    discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY = yarl.URL(cfg.gateway_url)


class _Client(discord.Client):
    def __init__(self, surface: "DiscordSurface", **kw):
        super().__init__(**kw)
        self.surface = surface

    async def setup_hook(self) -> None:
        await self.surface.setup(self)

    async def on_message(self, message: discord.Message) -> None:
        if self.surface.seen.first_time(message.id):
            await self.surface.on_message(message)


class DiscordSurface:
    def __init__(self, engine: EngineAPI, loaded, token: str):
        cfg = loaded.config
        self.engine = engine
        self.cfg: DiscordConfig = cfg.discord
        self.token = token
        self.default_lang = cfg.language.default
        self.card_limits = cfg.cards.limits
        self.counters = Counters()
        self.seen = Seen()
        self.client: _Client | None = None
        self.commands: Commands | None = None
        self.conversations: Conversations | None = None
        self.messages: Messages | None = None
        self.synced: list = []
        self._task: asyncio.Task | None = None
        self._resuming: asyncio.Task | None = None
        self._pending: list = []

    async def on_message(self, message: discord.Message) -> None:
        """A channel with a scene is answered by its characters; elsewhere mentions, DMs and reply chains."""
        me = self.client.user if self.client else None
        if me is None or message.author.bot or message.webhook_id is not None or message.author.id == me.id:
            return
        if not await self.commands.scenes.on_message(message):
            await self.messages.on_message(message)

    def _trace(self) -> aiohttp.TraceConfig:
        """Counts 429s on the wire: discord.py waits them out itself and never tells the caller."""
        trace = aiohttp.TraceConfig()

        async def on_end(session, ctx, params: aiohttp.TraceRequestEndParams) -> None:
            if params.response.status == 429:
                self.counters.rate_limited += 1
                log.warning("Discord answered 429 to %s %s", params.method, params.url.path)

        trace.on_request_end.append(on_end)
        return trace

    def _make_client(self) -> _Client:
        intents = discord.Intents.default()
        intents.message_content = self.cfg.message_content_intent
        intents.members = False
        intents.presences = False
        client = _Client(self, intents=intents, http_trace=self._trace(),
                         allowed_mentions=discord.AllowedMentions(everyone=False, roles=False, users=True))
        return client

    async def setup(self, client: _Client) -> None:
        """Runs inside login: build the handlers and sync the slash commands."""
        access = Access(self.cfg.permissions)
        personas = Personas(hook_name=client.user.name if client.user else "llmbot")
        journal = Journal(self.engine, f"discord:{client.application_id}", self.cfg.max_attempts)
        self.conversations = Conversations(self.engine, self.cfg, self.default_lang, personas, self.counters,
                                           client=client, journal=journal)
        self.messages = Messages(client, self.engine, self.conversations, access, self.cfg.allow_dms)
        self.commands = Commands(client, self.engine, self.conversations, access, self.cfg.allow_dms,
                                 self.card_limits, self.seen)
        try:
            # Read before the gateway connects, so events of this run are never taken for unfinished ones.
            self._pending = await journal.pending()
        except Exception as e:  # noqa: BLE001 - the store may be down; new messages still get answers
            log.error("unfinished Discord replies not resumed: %s", e)
        tree = self.commands.tree
        await tree.set_translator(Translator())
        if not self.cfg.sync_commands:
            log.info("slash commands not synced (discord.sync_commands is false)")
            return
        self.synced = await tree.sync()
        for gid in self.cfg.sync_guild_ids:
            guild = discord.Object(gid)
            tree.copy_global_to(guild=guild)
            await tree.sync(guild=guild)
        where = "globally" + (f" and to guilds {', '.join(map(str, self.cfg.sync_guild_ids))}"
                              if self.cfg.sync_guild_ids else "")
        log.info("synced %d slash commands %s at %s", len(self.synced), where, self.cfg.api_base_url)

    async def start(self) -> None:
        point_discord_at(self.cfg)
        self.client = self._make_client()
        await self.client.login(self.token)
        self._task = asyncio.create_task(self.client.connect(reconnect=True), name="discord-gateway")
        self._task.add_done_callback(self._gateway_ended)
        self._resuming = asyncio.create_task(self._resume(), name="discord-resume")

    async def _resume(self) -> None:
        """Complete, once, the replies an earlier run was cut off in (oldest first), when the gateway is ready."""
        pending = self._pending
        self._pending = []
        await self.client.wait_until_ready()
        journal = self.conversations.journal
        if pending:
            log.info("resuming %d unfinished Discord repl%s", len(pending), "y" if len(pending) == 1 else "ies")
        for entry, payload in pending:
            try:
                await self.conversations.resume(entry, payload)
            except Exception:  # noqa: BLE001 - one broken record must not stop the others
                log.exception("resuming %s failed", entry.key)
                await journal.done(entry, "error")

    def _gateway_ended(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("the Discord gateway connection ended: %s", task.exception())

    async def wait_ready(self, timeout: float = 30.0) -> None:
        await asyncio.wait_for(self.client.wait_until_ready(), timeout)

    async def stop(self) -> None:
        if self._resuming is not None and not self._resuming.done():
            self._resuming.cancel()
            await asyncio.gather(self._resuming, return_exceptions=True)
        if self.client is not None:
            await self.client.close()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 10)
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception):  # noqa: BLE001 - closing anyway
                pass


def make_surface(engine: EngineAPI, loaded) -> DiscordSurface:
    return DiscordSurface(engine, loaded, loaded.secrets.discord_token)
