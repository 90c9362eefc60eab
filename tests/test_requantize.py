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
