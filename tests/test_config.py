"""bot.yaml and environment: one-line errors that name the key and line; secrets only from the environment."""
from __future__ import annotations

from pathlib import Path

import pytest

from bot.config import ConfigError, load, load_secrets, parse_config
from conftest import ROOT

TEXT = (ROOT / "bot.yaml").read_text(encoding="utf-8")


def line_of(text: str, needle: str) -> int:
    return next(i for i, l in enumerate(text.splitlines(), 1) if needle in l)


def test_the_shipped_config_is_valid_and_runs_on_cpu():
    cfg = parse_config(TEXT, Path("bot.yaml"))
    assert cfg.models.chat.backend == "transformers" and cfg.models.chat.device == "cpu"
    assert cfg.models.roleplay.backend == "llamacpp" and cfg.models.roleplay.n_gpu_layers == 0
    chat = cfg.models.chat
    assert (chat.temperature, chat.top_k, chat.top_p, chat.repetition_penalty) == (0.64, 51, 0.63, 1.21)
    assert (cfg.models.roleplay.temperature, cfg.models.roleplay.top_p) == (0.7, 0.95)
    assert (chat.max_new_tokens.low, chat.max_new_tokens.medium, chat.max_new_tokens.high) == (100, 250, 500)


@pytest.mark.parametrize("old,new,key,message", [
    ("top_k: 51", "top_k: many", "models.chat.top_k", "integer"),
    ("top_k: 51", "top_kk: 51", "models.chat.top_kk", "unknown key"),
    ("quantization: none ", "quantization: int3 ", "models.chat.quantization", "'nf4'"),
    ("backend: llamacpp", "backend: vllm", "models.roleplay", "does not match"),
    ("  port: 8080", "  port: 80800", "http.port", "less than or equal"),
    ("  default: ko", "  default: fr", "language.default", "'ko' or 'en'"),
    ("    device: cpu", "    device: gpu", "models.chat.device", "cuda"),
    ("kv_budget_tokens: 20480", "kv_budget_tokens: 8192", "models.roleplay.kv_budget_tokens", "at least 16384"),
    ("requantize: q8_0 ", "requantize: q4_k ", "models.roleplay.requantize", "'q8_0'"),
    ("cache_reuse: 64 ", "cache_reuse: -64 ", "models.roleplay.cache_reuse", "greater than or equal to 0"),
])
def test_a_wrong_key_type_or_value_names_key_and_line(old, new, key, message):
    text = TEXT.replace(old, new, 1)
    assert text != TEXT
    with pytest.raises(ConfigError) as e:
        parse_config(text, Path("bot.yaml"))
    msg = str(e.value)
    assert "\n" not in msg and f"bot.yaml:{line_of(text, new.strip())}: {key}" in msg and message in msg, msg


def test_missing_required_key_and_broken_yaml():
    with pytest.raises(ConfigError, match=r"models.roleplay.model_path: required key is missing"):
        parse_config(TEXT.replace("    model_path:", "    # model_path:"), Path("bot.yaml"))
    with pytest.raises(ConfigError, match=r"bot.yaml:\d+: not valid YAML"):
        parse_config(TEXT + "\n  bad: [unclosed\n", Path("bot.yaml"))
    with pytest.raises(ConfigError, match="duplicate key"):
        parse_config(TEXT + "\nhttp: {}\n", Path("bot.yaml"))
    with pytest.raises(ConfigError, match="cannot read"):
        load("/nonexistent/bot.yaml")


def test_secrets_come_from_the_environment_and_dotenv(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("BOT_API_KEY=from-file\nTELEGRAM_TOKEN=t1\n", encoding="utf-8")
    s = load_secrets(env_file, {"BOT_API_KEY": "from-env"})
    assert s.api_key == "from-env" and s.telegram_token == "t1" and s.discord_token is None
    assert s.mongo_uri is None
    parts = {"MONGO_HOST": "db.local", "MONGO_PORT": "27018", "MONGO_ADMIN_USER": "ad min",
             "MONGO_ADMIN_PASSWORD": "p@ss", "MONGO_DATABASE": "bot", "MONGO_AUTH": "admin"}
    assert load_secrets(None, parts).mongo_uri == "mongodb://ad+min:p%40ss@db.local:27018/bot?authSource=admin"
    uri = "mongodb+srv://u:p@cluster.example/db?replicaSet=rs0&tls=true&w=majority"
    assert load_secrets(None, {"MONGO_URI": uri, **parts}).mongo_uri == uri      # passed untouched
