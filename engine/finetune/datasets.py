"""Read JSONL/JSON/CSV training data in Alpaca, QA or chat shape into chat messages; report every bad row by line."""
from __future__ import annotations

import csv
import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

Message = dict[str, str]

# Key spellings met in public datasets; the first one found wins.
_INSTRUCTION = ("instruction",)
_INPUT = ("input", "context")
_OUTPUT = ("output", "response")
_QUESTION = ("question", "질문", "query", "prompt")
_ANSWER = ("answer", "답변", "답", "completion")
_SYSTEM = ("system", "system_prompt")
_ROLES = {
    "system": "system",
    "user": "user", "human": "user",
    "assistant": "assistant", "gpt": "assistant", "bot": "assistant", "model": "assistant",
}
_JSON_CONTAINERS = ("data", "rows", "examples", "train")
EXPECTED_SHAPES = (
    "instruction/output (Alpaca, optional input), question/answer (QA, also 질문/답변, prompt/completion) "
    "or messages (a list of {role, content})"
)


class DatasetError(ValueError):
    """The file as a whole cannot be read (missing, wrong format, broken JSON)."""


@dataclass(frozen=True)
class Example:
    """One training conversation; ``line`` is where it starts in the source file."""

    messages: tuple[Message, ...]
    line: int
    shape: str


@dataclass(frozen=True)
class RowProblem:
    line: int
    reason: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.reason}"


@dataclass
class DatasetReport:
    """What was read, what was kept, and every row left out with its line and reason."""

    path: str
    file_format: str
    rows_read: int = 0
    shapes: Counter = field(default_factory=Counter)
    problems: list[RowProblem] = field(default_factory=list)
    token_lengths: list[int] = field(default_factory=list)
    train_rows: int = 0
    eval_rows: int = 0

    @property
    def kept(self) -> int:
        return self.rows_read - len(self.problems)

    def dropped_by_reason(self) -> Counter:
        return Counter(p.reason.split(":")[0] for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        lengths = self.token_lengths
        return {
            "path": self.path,
            "format": self.file_format,
            "rows": self.rows_read,
            "kept": self.kept,
            "shapes": dict(self.shapes),
            "dropped": len(self.problems),
            "dropped_by_reason": dict(self.dropped_by_reason()),
            "problems": [{"line": p.line, "reason": p.reason} for p in self.problems],
            "tokens": {
                "min": min(lengths) if lengths else 0,
                "mean": round(sum(lengths) / len(lengths), 1) if lengths else 0.0,
                "max": max(lengths) if lengths else 0,
                "total": sum(lengths),
            },
            "train_rows": self.train_rows,
            "eval_rows": self.eval_rows,
        }

    def summary(self) -> str:
        d = self.to_dict()
        shapes = ", ".join(f"{k} {v}" for k, v in sorted(d["shapes"].items())) or "none"
        t = d["tokens"]
        lines = [
            f"{self.path} ({self.file_format}): {d['rows']} rows, {d['kept']} kept ({shapes}), "
            f"{d['dropped']} dropped",
            f"tokens per example: min {t['min']}, mean {t['mean']}, max {t['max']}, total {t['total']}",
            f"split: {self.train_rows} train, {self.eval_rows} eval",
        ]
        lines += [f"  dropped {p}" for p in self.problems]
        return "\n".join(lines)


def _first(row: dict, keys: tuple[str, ...]) -> tuple[str | None, Any]:
    for key in keys:
        if key in row:
            return key, row[key]
    return None, None


def _text(row: dict, keys: tuple[str, ...], *, required: bool) -> str | None:
    """The stripped string under one of ``keys``; ValueError names the key when it is unusable."""
    key, value = _first(row, keys)
    if key is None or value is None or value == "":
        if required:
            raise ValueError(f"missing or empty {keys[0]!r}")
        return None
    if not isinstance(value, str):
        raise ValueError(f"{key!r} must be text, got {type(value).__name__}")
    if required and not value.strip():
        raise ValueError(f"{key!r} is blank")
    return value.strip()


def _with_system(row: dict, messages: list[Message]) -> tuple[Message, ...]:
    system = _text(row, _SYSTEM, required=False)
    return tuple(([{"role": "system", "content": system}] if system else []) + messages)


def _chat(row: dict, key: str) -> tuple[Message, ...]:
    raw = row[key]
    if isinstance(raw, str):          # CSV cells hold the list as JSON text
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ValueError(f"{key!r} is not a JSON list: {e.msg}") from None
    if not isinstance(raw, list) or not raw:
        raise ValueError(f"{key!r} must be a non-empty list of messages")
    messages: list[Message] = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise ValueError(f"{key}[{i}] must be an object with role and content")
        role_raw = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        role = _ROLES.get(str(role_raw).lower()) if role_raw is not None else None
        if role is None:
            raise ValueError(f"{key}[{i}] has unknown role {role_raw!r} (use system, user or assistant)")
        if not isinstance(content, str):
            raise ValueError(f"{key}[{i}] content must be text")
        if role != "system" and not content.strip():
            raise ValueError(f"{key}[{i}] ({role}) is empty")
        messages.append({"role": role, "content": content.strip()})
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError(f"{key!r} has no assistant message to learn from")
    if not any(m["role"] == "user" for m in messages):
        raise ValueError(f"{key!r} has no user message")
    if any(m["role"] == "system" for m in messages[1:]):
        raise ValueError(f"{key!r}: a system message may only come first")
    return tuple(messages)


def normalize(row: Any) -> tuple[str, tuple[Message, ...]]:
    """(shape, chat messages) of one record; ValueError says what is wrong with it."""
    if not isinstance(row, dict):
        raise ValueError(f"expected an object, got {type(row).__name__}")
    for key in ("messages", "conversations"):
        if key in row:
            return "chat", _chat(row, key)
    if _first(row, _INSTRUCTION)[0] and _first(row, _OUTPUT)[0]:
        instruction = _text(row, _INSTRUCTION, required=True)
        extra = _text(row, _INPUT, required=False)
        user = f"{instruction}\n\n{extra}" if extra else instruction
        answer = _text(row, _OUTPUT, required=True)
        return "alpaca", _with_system(row, [{"role": "user", "content": user},
                                            {"role": "assistant", "content": answer}])
    if _first(row, _QUESTION)[0] and _first(row, _ANSWER)[0]:
        question = _text(row, _QUESTION, required=True)
        answer = _text(row, _ANSWER, required=True)
        return "qa", _with_system(row, [{"role": "user", "content": question},
                                        {"role": "assistant", "content": answer}])
    keys = ", ".join(sorted(map(str, row))) or "none"
    raise ValueError(f"unknown shape (keys: {keys}); expected {EXPECTED_SHAPES}")


def _jsonl_records(text: str) -> Iterator[tuple[int, Any, str | None]]:
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line), None
        except json.JSONDecodeError as e:
            yield number, None, f"invalid JSON: {e.msg} (column {e.colno})"


def _line_of(text: str, pos: int) -> int:
    return text.count("\n", 0, pos) + 1


def _skip(text: str, pos: int, chars: str = "") -> int:
    while pos < len(text) and (text[pos].isspace() or text[pos] in chars):
        pos += 1
    return pos


def _json_array(text: str, pos: int) -> Iterator[tuple[int, Any, str | None]]:
    """Elements of the array opening at ``pos``, each with the line it starts on."""
    decoder = json.JSONDecoder()
    pos = _skip(text, pos + 1)
    while pos < len(text) and text[pos] != "]":
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            raise DatasetError(f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
        yield _line_of(text, pos), value, None
        pos = _skip(text, end, ",")


def _json_records(text: str) -> Iterator[tuple[int, Any, str | None]]:
    """A top-level array, or an object holding the array under data/rows/examples/train."""
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as e:
        raise DatasetError(f"invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    start = _skip(text, 0)
    if isinstance(whole, list):
        yield from _json_array(text, start)
        return
    if isinstance(whole, dict):
        for key in _JSON_CONTAINERS:
            if isinstance(whole.get(key), list):
                # Find the array's own position by walking the object's members in order.
                decoder, pos = json.JSONDecoder(), _skip(text, start + 1)
                while True:
                    name, pos = decoder.raw_decode(text, pos)
                    pos = _skip(text, pos, ":")
                    if name == key:
                        yield from _json_array(text, pos)
                        return
                    _, pos = decoder.raw_decode(text, pos)
                    pos = _skip(text, pos, ",")
        if any(k in whole for k in ("messages", "instruction", "question")):
            yield _line_of(text, start), whole, None
            return
    raise DatasetError(f"expected a JSON array of rows (or an object with one of {', '.join(_JSON_CONTAINERS)})")


def _csv_records(text: str) -> Iterator[tuple[int, Any, str | None]]:
    reader = csv.DictReader(text.splitlines(keepends=True))
    if not reader.fieldnames:
        raise DatasetError("the CSV file has no header row")
    start = reader.line_num + 1
    for row in reader:
        if None in row:
            yield start, None, f"{len(row[None])} more cells than the header has columns"
        elif all(v in (None, "") for v in row.values()):
            pass                      # a blank line inside the CSV is not a row
        else:
            yield start, {k: v for k, v in row.items() if k}, None
        start = reader.line_num + 1


_READERS = {".jsonl": ("jsonl", _jsonl_records), ".json": ("json", _json_records), ".csv": ("csv", _csv_records)}


def read_dataset(path: Path | str) -> tuple[list[Example], DatasetReport]:
    """Every usable example of the file and a report naming each row left out, by line."""
    path = Path(path)
    kind = _READERS.get(path.suffix.lower())
    if kind is None:
        raise DatasetError(f"{path}: unsupported file type {path.suffix!r}; use .jsonl, .json or .csv")
    if not path.is_file():
        raise DatasetError(f"{path}: no such file")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not UTF-8 text (byte {e.start})") from None
    file_format, records = kind
    report = DatasetReport(path=str(path), file_format=file_format)
    examples: list[Example] = []
    try:
        for line, record, error in records(text):
            report.rows_read += 1
            if error is None:
                try:
                    shape, messages = normalize(record)
                except ValueError as e:
                    error = str(e)
                else:
                    report.shapes[shape] += 1
                    examples.append(Example(messages, line, shape))
            if error is not None:
                report.problems.append(RowProblem(line, error))
    except (DatasetError, csv.Error) as e:
        raise DatasetError(f"{path}: {e}") from None
    return examples, report


def split(examples: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """A seeded shuffle cut into (train, eval); a non-zero fraction keeps at least one of each."""
    if not 0.0 <= eval_fraction < 1.0:
        raise ValueError("eval fraction must be in [0, 1)")
    order = list(examples)
    random.Random(seed).shuffle(order)
    n_eval = round(len(order) * eval_fraction)
    if eval_fraction > 0 and len(order) >= 2:
        n_eval = min(max(n_eval, 1), len(order) - 1)
    return order[n_eval:], order[:n_eval]
