"""requantize: q8_0: the roleplay GGUF re-encoded once by llama.cpp's quantizer, reused, remade when the source changes."""
from __future__ import annotations

import os
import shutil

import pytest
from gguf import GGUFReader

from conftest import ROOT, make_config
from engine.loading import ModelLoadError, gguf_file
from engine.settings import resolve_model_path

MOSTLY_Q8_0 = 7       # llama_ftype
MOSTLY_Q4_1 = 3


def file_type(path) -> int:
    return int(GGUFReader(str(path)).fields["general.file_type"].parts[-1][0])


def test_the_shipped_config_serves_a_q8_0_copy_of_the_q4_1_gguf(tmp_path):
    shipped = make_config().models.roleplay
    assert shipped.requantize == "q8_0"
    src = tmp_path / "model.gguf"
    shutil.copy(resolve_model_path(shipped.model_path, ROOT), src)
    cfg = shipped.model_copy(update={"model_path": str(src)})
    cache = tmp_path / "ai_model"

    made = gguf_file("roleplay", cfg, ROOT, cache)
    assert made == cache / "requantized" / "model.Q8_0.gguf"
    assert (file_type(src), file_type(made)) == (MOSTLY_Q4_1, MOSTLY_Q8_0)
    assert not [p for p in made.parent.iterdir() if p.name.endswith(".partial")]

    stamp = made.stat().st_mtime_ns
    assert gguf_file("roleplay", cfg, ROOT, cache) == made and made.stat().st_mtime_ns == stamp   # reused

    os.utime(src, ns=(stamp + 10**9, stamp + 10**9))          # the package was upgraded: a new source file
    assert gguf_file("roleplay", cfg, ROOT, cache) == made and made.stat().st_mtime_ns != stamp

    plain = cfg.model_copy(update={"requantize": "none"})
    assert gguf_file("roleplay", plain, ROOT, cache) == src
    with pytest.raises(ModelLoadError, match="refusing to start with a different model file"):
        gguf_file("roleplay", cfg.model_copy(update={"sha256": "0" * 64}), ROOT, cache)   # checked on the source


def _prepare(config_path):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "bot", "prepare", "--config", str(config_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


def test_prepare_makes_the_copy_before_the_first_start_and_names_a_missing_file(tmp_path):
    import yaml

    data = yaml.safe_load((ROOT / "bot.yaml").read_text(encoding="utf-8"))
    data["models"]["chat"] = {"backend": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "remote"}
    cfg_file = tmp_path / "bot.yaml"
    cfg_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    run = _prepare(cfg_file)
    assert run.returncode == 0, run.stderr
    made = tmp_path / "ai_model" / "requantized" / "SmolLM2-135M-Instruct.Q4_1.Q8_0.gguf"
    assert file_type(made) == MOSTLY_Q8_0
    assert run.stdout.splitlines() == ["chat: remote, nothing to prepare", f"roleplay: {made}"]
    stamp = made.stat().st_mtime_ns
    assert _prepare(cfg_file).returncode == 0 and made.stat().st_mtime_ns == stamp     # current: kept

    data["models"]["roleplay"]["model_path"] = str(tmp_path / "missing.gguf")
    cfg_file.write_text(yaml.safe_dump(data), encoding="utf-8")
    run = _prepare(cfg_file)
    assert run.returncode == 3 and run.stderr.strip() == (
        f"model error: models.roleplay.model_path: no such file: {tmp_path / 'missing.gguf'}")
