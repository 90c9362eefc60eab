"""Durable writes the database did not take yet, mirrored in a JSON-lines file so that a crash loses none."""
from __future__ import annotations

import logging
import os
from pathlib import Path

from bson import json_util

log = logging.getLogger(__name__)


class Outbox:
    """Pending (collection, document) pairs, oldest first; ``path`` None keeps them in memory only."""

    def __init__(self, path: Path | None):
        self.path = path
        self.items: list[tuple[str, dict]] = []

    def load(self) -> None:
        if self.path is None or not self.path.is_file():
            return
        seen = {(c, d.get("_id")) for c, d in self.items}
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                entry = json_util.loads(line)
                coll, doc = entry["coll"], entry["doc"]
            except (ValueError, KeyError, TypeError):
                continue                      # a line cut off by a crash mid-write
            if (coll, doc.get("_id")) not in seen:
                seen.add((coll, doc.get("_id")))
                self.items.append((coll, doc))
        if self.items:
            log.warning("%d write(s) kept from an earlier run will be replayed (%s)", len(self.items), self.path)

    def add(self, coll: str, doc: dict) -> None:
        self.items.append((coll, doc))
        if self.path is not None:
            self._write("a", [(coll, doc)])

    def sync(self) -> None:
        """Make the file hold exactly what is still pending (nothing: no file)."""
        if self.path is None:
            return
        if not self.items:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.unlink(missing_ok=True)
        self._write("a", self.items, target=tmp)
        os.replace(tmp, self.path)

    def _write(self, mode: str, entries: list[tuple[str, dict]], target: Path | None = None) -> None:
        target = target or self.path
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            with open(target, mode, encoding="utf-8") as f:
                for coll, doc in entries:
                    f.write(json_util.dumps({"coll": coll, "doc": doc}, json_options=json_util.CANONICAL_JSON_OPTIONS)
                            + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as e:
            log.error("cannot keep pending writes in %s (%s); they live in memory only", target, e)
