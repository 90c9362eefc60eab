"""Load bot.yaml and the environment into one typed, frozen AppConfig; errors name the key and its line."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote_plus

import yaml
from dotenv import dotenv_values
from pydantic import Field, ValidationError, field_validator

from bot.discord.config import DiscordConfig
from bot.telegram.config import TelegramConfig
from engine.settings import (Cards, CharacterEntry, Language, Limits, Memory, Models, Mongo, SceneSettings,
                             Strict)


class WebPage(Strict):
    """The web chat page at / and its API under /web/api/."""

    enabled: bool = True
    require_key: bool = False                 # true: /web/api/* needs the API key like the rest of the API
    per_ip_in_flight: int = Field(1, ge=0)    # replies one address may have in progress (0: no limit)
    per_ip_per_minute: int = Field(10, ge=0)  # chats one address may start a minute (0: no limit)


class HttpAdmin(Strict):
    all_databases: bool = False               # /mongo/*: every database on the server, not only the bot's


class HttpConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    allow_ips: tuple[str, ...] = ()          # empty: every address; else only these (CIDR allowed)
    max_body_bytes: int = Field(1024 * 1024, ge=1024)
    max_input_chars: int = Field(500, ge=1)  # /Llama_stream and /Lumimaid_stream, as the older server
    max_history: int = Field(20, ge=1)       # /chatweb turns kept
    max_system_chars: int = Field(4000, ge=1)    # instruction.command, /v1 system messages
    max_context_chars: int = Field(8000, ge=1)   # /Lumimaid_stream context and greeting
    max_history_chars: int = Field(16000, ge=1)  # /chatweb history and /v1 earlier messages, all together
    header_timeout_s: float = Field(10.0, gt=0, le=3600)   # request line and headers; keep-alive idle; read-on after a 408
    body_timeout_s: float = Field(15.0, gt=0, le=3600)     # to send the whole body once the headers are in, else 408
    max_header_bytes: int = Field(8190, ge=1024)
    max_queue_wait_s: float = Field(10.0, gt=0)  # longest wait for a busy model before a 503 "busy" answer
    per_client_in_flight: int = Field(8, ge=0)   # per API key and address; 0: no limit
    per_client_per_minute: int = Field(60, ge=0)
    web: WebPage = WebPage()
    admin: HttpAdmin = HttpAdmin()
    human_tag: str = "### 사용자"
    ai_tag: str = "### AI"
    stop_strings: tuple[str, ...] = ("### 사용자", "### AI", "###")

    @field_validator("allow_ips")
    @classmethod
    def _networks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for i, net in enumerate(v):
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"entry {i + 1} ({net!r}) is not an IP address or network such as 10.0.0.0/8") \
                    from None
        return v


class LoggingConfig(Strict):
    """Where the log goes; ``--log-level`` overrides ``level``."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    file: str | None = None                   # e.g. logs/bot.log: relative paths are under --data-dir
    max_bytes: int = Field(10 * 1024 * 1024, ge=1024)
    backups: int = Field(5, ge=0, le=1000)

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, v):
        return v.upper() if isinstance(v, str) else v


class AppConfig(Strict):
    language: Language = Language()
    models: Models
    mongo: Mongo = Mongo()
    http: HttpConfig = HttpConfig()
    limits: Limits = Limits()
    memory: Memory = Memory()
    cards: Cards = Cards()
    characters: tuple[CharacterEntry, ...] = ()
    scenes: SceneSettings = SceneSettings()
    discord: DiscordConfig = DiscordConfig()
    telegram: TelegramConfig = TelegramConfig()
    logging: LoggingConfig = LoggingConfig()


@dataclass(frozen=True)
class Secrets:
    """Secrets come only from the environment (or a .env file), never from bot.yaml."""

    mongo_uri: str | None
    api_key: str | None
    discord_token: str | None
    telegram_token: str | None
    env: dict[str, str]

    def get(self, name: str | None) -> str | None:
        return self.env.get(name) if name else None


@dataclass(frozen=True)
class Loaded:
    config: AppConfig
    secrets: Secrets
    path: Path

    @property
    def base_dir(self) -> Path:
        return self.path.parent


class ConfigError(Exception):
    """One line that says what is wrong and where."""


class _LineLoader(yaml.SafeLoader):
    """A SafeLoader that remembers the line of every mapping key."""


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode) -> dict:
    mapping = _LinedDict()
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in mapping:
            raise ConfigError(f"line {key_node.start_mark.line + 1}: duplicate key {key!r}")
        mapping[key] = loader.construct_object(value_node, deep=True)
        mapping.lines[key] = key_node.start_mark.line + 1
    mapping.line = node.start_mark.line + 1
    return mapping


class _LinedDict(dict):
    def __init__(self):
        super().__init__()
        self.lines: dict[Any, int] = {}
        self.line = 0


class _LinedList(list):
    line = 0


def _construct_sequence(loader: _LineLoader, node: yaml.SequenceNode) -> list:
    seq = _LinedList(loader.construct_object(child, deep=True) for child in node.value)
    seq.line = node.start_mark.line + 1
    seq.lines = [child.start_mark.line + 1 for child in node.value]
    return seq


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_SEQUENCE_TAG, _construct_sequence)


def _line_of(doc: Any, loc: tuple) -> tuple[str, int | None]:
    """Follow a pydantic error location through the parsed YAML to a dotted key and a line."""
    node, line, parts = doc, getattr(doc, "line", None), []
    for part in loc:
        if isinstance(node, _LinedDict) and part in node:
            line = node.lines.get(part, line)
            parts.append(str(part))
            node = node[part]
        elif isinstance(node, _LinedList) and isinstance(part, int) and part < len(node):
            line = node.lines[part]
            parts.append(f"[{part}]")
            node = node[part]
        elif isinstance(node, (_LinedDict, _LinedList)) and isinstance(part, str) and "[" not in part \
                and part not in ("transformers", "llamacpp", "openai"):
            parts.append(part)   # a missing or unknown key: report it under its parent's line
            node = None
        # else: a discriminator tag or validator name pydantic adds; not a YAML key
    return ".".join(parts).replace(".[", "["), line


def _format_error(err: dict, doc: Any, path: Path) -> str:
    loc = tuple(err["loc"])
    if err["type"] in ("union_tag_invalid", "union_tag_not_found"):
        loc += ("backend",)       # the models' discriminator: point at the line that chose the backend
    key, line = _line_of(doc, loc)
    msg = err["msg"]
    if err["type"] == "extra_forbidden":
        msg = "unknown key"
    elif err["type"] == "missing":
        msg = "required key is missing"
    where = f"{path}:{line}" if line else str(path)
    return f"{where}: {key or '(top level)'}: {msg}"


def parse_config(text: str, path: Path) -> AppConfig:
    try:
        doc = yaml.load(text, Loader=_LineLoader)  # noqa: S506 - SafeLoader subclass
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    try:
        return AppConfig.model_validate(doc)
    except ValidationError as e:
        errors = e.errors()
        first = _format_error(errors[0], doc, path)
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(first + more) from None


def _mongo_uri(env: dict[str, str]) -> str | None:
    """MONGO_URI, else one built from the older server's parts, else None (embedded server)."""
    if env.get("MONGO_URI"):
        return env["MONGO_URI"]
    host = env.get("MONGO_HOST")
    if not host:
        return None
    port = env.get("MONGO_PORT", "27017")
    user, password = env.get("MONGO_ADMIN_USER"), env.get("MONGO_ADMIN_PASSWORD")
    cred = f"{quote_plus(user)}:{quote_plus(password or '')}@" if user else ""
    db = env.get("MONGO_DATABASE", "")
    auth = f"?authSource={quote_plus(env['MONGO_AUTH'])}" if env.get("MONGO_AUTH") else ""
    return f"mongodb://{cred}{host}:{port}/{db}{auth}"


def load_secrets(env_file: Path | None = None, environ: dict[str, str] | None = None) -> Secrets:
    env: dict[str, str] = {}
    if env_file is not None and env_file.is_file():
        env.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    env.update(os.environ if environ is None else environ)   # the real environment wins over .env
    return Secrets(
        mongo_uri=_mongo_uri(env),
        api_key=env.get("BOT_API_KEY") or None,
        discord_token=env.get("DISCORD_TOKEN") or None,
        telegram_token=env.get("TELEGRAM_TOKEN") or None,
        env=env,
    )


def load(path: str | Path, environ: dict[str, str] | None = None) -> Loaded:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read the config file: {e.strerror or e}") from None
    config = parse_config(text, path)
    return Loaded(config=config, secrets=load_secrets(Path(".env"), environ), path=path.resolve())
