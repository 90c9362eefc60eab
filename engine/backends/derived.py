"""Copies made from a model file (dequantized, re-encoded): whether one is still current, and marking it so."""
from __future__ import annotations

import json
from pathlib import Path


def _stamp(src: Path) -> dict:
    stat = src.stat()
    return {"path": str(src.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def current(note: Path, src: Path) -> bool:
    """True when ``note`` says the copy was made from ``src`` as it is now (a package upgrade changes it)."""
    try:
        return json.loads(note.read_text(encoding="utf-8")) == _stamp(src)
    except (OSError, ValueError):
        return False


def mark(note: Path, src: Path) -> None:
    note.write_text(json.dumps(_stamp(src)), encoding="utf-8")
