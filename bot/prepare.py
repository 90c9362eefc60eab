"""python -m bot prepare [--config F]: make the models' local copies now, so the first start does not wait for them."""
from __future__ import annotations

import argparse
import sys

from bot.config import ConfigError, load


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bot prepare",
                                description="Write the configured models' local copies (a GGUF re-encoded for "
                                            "llama.cpp, a GGUF's dequantized folder for transformers) into "
                                            "ai_model/ if they are missing or older than their source.")
    p.add_argument("--config", default="bot.yaml", help="path of the config file (default: bot.yaml)")
    args = p.parse_args(argv)
    try:
        loaded = load(args.config)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    from engine.loading import ModelLoadError, prepare_copy

    models = loaded.config.models
    for role in ("chat", "roleplay"):
        try:
            source = prepare_copy(role, getattr(models, role), loaded.base_dir, loaded.base_dir / "ai_model")
        except ModelLoadError as e:
            print(f"model error: {e}", file=sys.stderr)
            return 3
        print(f"{role}: {source or 'remote, nothing to prepare'}")
    return 0
