"""Re-encode a GGUF with llama.cpp's own quantizer, once, into the model cache folder."""
from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

from engine.backends.derived import current, mark

log = logging.getLogger(__name__)


def requantized(src: Path, ftype: str, cache_dir: Path) -> Path:
    """``src`` as ``ftype`` (e.g. "q8_0") under ``cache_dir``/requantized/, made on first use and reused while
    the source file is unchanged (its size and modification time are noted beside the copy)."""
    import llama_cpp

    code = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{ftype.upper()}")
    out = cache_dir / "requantized" / f"{src.stem}.{ftype.upper()}.gguf"
    note = out.with_name(out.name + ".source.json")
    if out.is_file() and current(note, src):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    log.info("re-encoding %s as %s into %s (once)", src.name, ftype.upper(), out)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.partial")   # two starting bots never share a half-written file
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = code
    params.allow_requantize = True
    params.nthread = os.cpu_count() or 1
    chatter = logging.getLogger("llama-cpp-python")     # llama.cpp's log goes there: a line per tensor
    level = chatter.level
    chatter.setLevel(logging.ERROR)
    try:
        rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            raise RuntimeError(f"llama.cpp could not re-encode {src.name} as {ftype.upper()} (code {rc})")
        os.replace(tmp, out)
    finally:
        chatter.setLevel(level)
        tmp.unlink(missing_ok=True)
    mark(note, src)
    return out
