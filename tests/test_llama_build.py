"""The llama.cpp that `make setup` built uses the x86 extensions this CPU lists (AMX included) and runs with them."""
from __future__ import annotations

import platform
import re
from pathlib import Path

import pytest

from conftest import make_config
from engine.backends.llamacpp_backend import load_llama
from engine.loading import gguf_file

ROOT = Path(__file__).resolve().parents[1]
# ggml's name in its system info -> what /proc/cpuinfo must list for the Makefile to switch it on
EXTENSIONS = {"AVX2": {"avx2"}, "AVX512": {"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"},
              "AVX512_VNNI": {"avx512_vnni"}, "AMX_INT8": {"amx_int8", "avx512_vnni"}}

pytestmark = pytest.mark.skipif(platform.machine() != "x86_64", reason="the Makefile picks extensions on x86 only")


def cpu_flags() -> set[str]:
    line = next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags"))
    return set(line.split(":", 1)[1].split())


def test_the_build_has_each_extension_the_cpu_lists_and_none_it_lacks():
    from llama_cpp import llama_print_system_info

    info = llama_print_system_info().decode()
    if "CUDA" in info:
        pytest.skip("LLAMA_FLAVOR=cuda builds for GPUs, not for this CPU's extensions")
    built = set(re.findall(r"(\w+) = 1", info))
    flags = cpu_flags()
    for name, needs in EXTENSIONS.items():
        assert (name in built) == (needs <= flags), (name, sorted(built))


def test_a_batched_prompt_and_single_tokens_decode_with_the_extensions_on():
    """Prefill (a matrix of tokens: AMX tiles where the CPU has them) and then one token at a time, greedy."""
    cfg = make_config().models.roleplay
    llm = load_llama(cfg, gguf_file("roleplay", cfg, ROOT, ROOT / "ai_model"), n_ctx=512)
    try:
        out = llm("The capital of France is", max_tokens=8, temperature=0.0)["choices"][0]["text"]
    finally:
        llm.close()
    assert "Paris" in out, out
