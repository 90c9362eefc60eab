"""Fuzz every HTTP route of a running bot with malformed requests and classify what comes back."""
from __future__ import annotations

import asyncio
import base64
import gzip
import json
import random
import time
from dataclasses import dataclass, field

# Every route the sidecar serves, with a body that is valid for it (the fuzzer mutates from there).
ROUTES: list[tuple[str, str, dict | None]] = [
    ("POST", "/Llama_stream", {"input_data": "Hi", "google_access": False, "session": "fz"}),
    ("POST", "/Lumimaid_stream", {"input_data": "Hi", "character_name": "Aria", "greeting": "Hello.",
                                  "context": "Aria is a bard.", "image": "", "access_level": True}),
    ("POST", "/inferweb", {"instruction": {"command": "Be brief."}, "input": "Hi"}),
    ("POST", "/chatweb", {"instruction": {"command": "Be brief."}, "input": "Hi",
                          "history": {"count": 1, "history": [{"type": "### 사용자", "str": "a"},
                                                              {"type": "### AI", "str": "b"}]}}),
    ("POST", "/v1/chat/completions", {"model": "chat", "stream": True, "max_tokens": 4,
                                      "messages": [{"role": "user", "content": "Hi"}]}),
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/chat", None),
    ("GET", "/characters", None),
    ("GET", "/characters/Wren%20Halloway", None),
    ("POST", "/characters", {"name": "Fuzz", "description": "x"}),
    ("GET", "/mongo/db", None),
    ("GET", "/mongo/collections?db_name=llmbot", None),
    ("GET", "/conversations/fz", None),
    ("GET", "/health", None),
    ("GET", "/metrics", None),
    ("GET", "/", None),
    ("GET", "/favicon.ico", None),
    ("GET", "/web/static/app.js", None),
    ("GET", "/web/api/characters", None),
    ("GET", "/web/api/characters/Wren%20Halloway/image", None),
    ("GET", "/web/api/history?session=fuzz-session-1", None),
    ("POST", "/web/api/chat", {"session": "fuzz-session-1", "text": "Hi", "target": "chat"}),
    ("POST", "/web/api/stop", {"session": "fuzz-session-1"}),
    ("POST", "/web/api/reset", {"session": "fuzz-session-1", "target": "chat"}),
]

ODD_VALUES = [None, True, False, 0, -1, 1e308, 2 ** 70, -(2 ** 63), "", " ", "x" * 5000, "\u0000", "\ud800",
              "한국어 " * 300, [], {}, [1, 2], {"a": {"b": None}}, "../../etc/passwd", "<script>alert(1)</script>",
              "%00", "NaN", "1e3", "\x1b[31m"]
ODD_QUERY = ["abc", "1e3", "-1", "99999999999999999999", "%zz", "", "0x10", "%00", "1;2", "ＡＢＣ", "\u00ff"]
ODD_PATHS = ["/web/static/" + "a" * 300, "/web/static/../../bot.yaml", "/web/static/%2e%2e/%2e%2e/bot.yaml",
             "/web/static/", "/web/static/.", "/conversations/" + "x" * 5000, "/characters/%00", "/characters/..%2f",
             "/nope", "/v1/models/" + "%ff" * 10, "//", "/%", "/Llama_stream/", "/v1/chat/completions?x=" + "y" * 9000,
             "/mongo/collections?db_name=admin", "/mongo/collections", "/web/api/history"]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "FOO"]


@dataclass
class Case:
    method: str
    path: str
    headers: dict[str, bytes] = field(default_factory=dict)
    body: bytes = b""
    mode: str = "normal"          # normal | truncated | slow | raw
    raw: bytes = b""              # the whole request when mode == "raw"
    label: str = ""


@dataclass
class Outcome:
    case: Case
    status: int | None            # None: no status line came back
    content_type: str = ""
    body: bytes = b""
    closed: bool = True           # the server closed (or answered) within the limit
    seconds: float = 0.0

    @property
    def json_error(self) -> bool:
        if self.status is None or self.status < 400 or self.case.method == "HEAD":
            return True
        if not self.content_type.startswith("application/json"):
            return False
        try:
            doc = json.loads(self.body)
        except ValueError:
            return False
        return isinstance(doc, dict) and ("message" in doc or "error" in doc)


def _mutate_value(rng: random.Random, value):
    choice = rng.random()
    if choice < 0.5:
        return rng.choice(ODD_VALUES)
    if isinstance(value, str):
        return value * rng.choice([100, 1000, 50_000])
    if isinstance(value, dict):
        return {k: _mutate_value(rng, v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mutate_value(rng, v) for v in value] * rng.choice([1, 50])
    return rng.choice(ODD_VALUES)


def _mutate_body(rng: random.Random, body: dict | None) -> bytes:
    kind = rng.randrange(12)
    if body is None or kind == 0:
        return rng.choice([b"", b"{", b"null", b"[]", b"\xff\xfe\x00", b'"str"', b"123", b"{}" * 3000])
    doc = json.loads(json.dumps(body))
    if kind == 1:
        return ("[" * rng.choice([100, 2000, 50_000])).encode()
    if kind == 2:
        return ('{"a":' * 3000 + "1" + "}" * 3000).encode()
    if kind == 3:
        key = rng.choice(list(doc))
        doc[key] = _mutate_value(rng, doc[key])
    elif kind == 4:
        doc.pop(rng.choice(list(doc)), None)
    elif kind == 5:
        doc["extra_" + str(rng.randrange(100))] = rng.choice(ODD_VALUES)
    elif kind == 6:
        return json.dumps(doc).encode()[: rng.randrange(1, max(2, len(json.dumps(doc))))]
    elif kind == 7:
        return json.dumps(doc).replace('"Hi"', '"\\ud800\\udfff\\ud800"').encode()
    elif kind == 8:
        return json.dumps(doc, ensure_ascii=False).encode("utf-16")
    elif kind == 9:
        for key in doc:
            doc[key] = _mutate_value(rng, doc[key])
    elif kind == 10:
        return json.dumps([doc]).encode()
    else:
        return json.dumps(doc).encode() + b"\x00garbage"
    return json.dumps(doc).encode()


def make_cases(n: int, api_key: str, seed: int = 0) -> list[Case]:
    """``n`` fuzzed requests over every route: bodies, types, sizes, encodings, queries, paths, headers, framing."""
    rng = random.Random(seed)
    cases: list[Case] = []
    key = api_key.encode()
    for i in range(n):
        method, path, body = rng.choice(ROUTES)
        headers = {"Content-Type": b"application/json", "X-API-Key": key}
        payload = json.dumps(body).encode() if body is not None else b""
        roll = rng.random()
        label = "body"
        if roll < 0.40:
            payload = _mutate_body(rng, body)
        elif roll < 0.48:
            label = "query"
            base = path.split("?")[0]
            name = rng.choice(["limit", "db_name", "session", "image", "offset", "x"])
            path = f"{base}?{name}={rng.choice(ODD_QUERY)}"
        elif roll < 0.56:
            label, path = "path", rng.choice(ODD_PATHS)
        elif roll < 0.62:
            label, method = "method", rng.choice(METHODS)
        elif roll < 0.72:
            label = "header"
            h = rng.randrange(10)
            if h == 0:
                headers["X-API-Key"] = bytes([rng.randrange(128, 256) for _ in range(8)])
            elif h == 1:
                headers.pop("X-API-Key")
            elif h == 2:
                headers["X-API-Key"] = b"wrong"
            elif h == 3:
                headers["Content-Encoding"] = rng.choice([b"gzip", b"deflate", b"br", b"zstd", b"bogus"])
                if rng.random() < 0.3:
                    payload = gzip.compress(payload)
            elif h == 4:
                headers["Content-Type"] = rng.choice([b"text/plain", b"multipart/form-data", b"application/x-www-form-urlencoded",
                                                      b"multipart/form-data; boundary=zz", b"\xff\xfe"])
            elif h == 5:
                headers["Expect"] = rng.choice([b"100-continue", b"bogus"])
            elif h == 6:
                headers["Authorization"] = rng.choice([b"Bearer", b"Bearer \xc3\xa9", b"Basic Zm9vOmJhcg==",
                                                       b"Bearer " + key + b"x"])
                headers.pop("X-API-Key")
            elif h == 7:
                headers["X-Forwarded-For"] = b"1.2.3.4, 5.6.7.8"
                headers["Accept-Encoding"] = b"gzip"
            elif h == 8:
                headers["Accept-Language"] = rng.choice([b"\xff\xfe", b"ko-KR,ko;q=0.9", b"x" * 4000, b"*;q=abc"])
            else:
                headers["Content-Type"] = b"application/json; charset=" + rng.choice([b"utf-16", b"latin-1", b"bogus"])
        elif roll < 0.80 and path.startswith("/characters") and method == "POST":
            label = "card"
            headers["Content-Type"] = b"multipart/form-data; boundary=BOUND"
            part = rng.choice([b"\x89PNG\r\n\x1a\n" + bytes(rng.randrange(256) for _ in range(200)), b"{}", b"",
                               base64.b64encode(b"x" * 100)])
            if rng.random() < 0.5:
                payload = (b"--BOUND\r\nContent-Disposition: form-data; name=\"card\"; filename=\"c.png\"\r\n\r\n"
                           + part + b"\r\n--BOUND--\r\n")
            else:
                payload = b"--BOUND\r\nContent-Disposition: form-data; name=\"card\"\r\n" + part[:30]
        elif roll < 0.86:
            label = "framing"
            mode = rng.choice(["truncated", "slow", "raw", "raw", "raw"])
            case = Case(method, path, headers, payload, mode, label=label)
            if mode == "raw":
                case.raw = rng.choice([b"\r\n\r\n", b"GET / HTTP/1.1\r\n", b"GARBAGE\r\n\r\n",
                                       b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
                                       b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 500 + b"\r\n",
                                       b"POST /Llama_stream HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                                       b"X-API-Key: " + key + b"\r\n\r\nzz\r\n",
                                       b"POST /Llama_stream HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
                                       b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
                                       b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n"])
            cases.append(case)
            continue
        else:
            label = "valid"
        cases.append(Case(method, path, headers, payload, label=label))
    return cases


def _request_bytes(case: Case, host: str) -> bytes:
    if case.mode == "raw":
        return case.raw
    lines = [f"{case.method} {case.path} HTTP/1.1".encode("utf-8", "surrogateescape"), f"Host: {host}".encode(),
             b"Connection: close"]
    length = len(case.body) + (100 if case.mode == "truncated" else 0)
    for k, v in case.headers.items():
        lines.append(k.encode() + b": " + v)
    if case.method not in ("GET", "HEAD") or case.body:
        lines.append(b"Content-Length: " + str(length).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _parse(data: bytes) -> tuple[int | None, str, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return None, "", b""
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(b":")
        headers[k.strip().lower().decode("latin-1")] = v.strip().decode("latin-1")
    if headers.get("transfer-encoding", "").lower() == "chunked":
        out, rest = b"", body
        while rest:
            size_line, _, rest = rest.partition(b"\r\n")
            try:
                size = int(size_line.split(b";")[0], 16)
            except ValueError:
                break
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        body = out
    return status, headers.get("content-type", ""), body


async def send(case: Case, host: str, port: int, limit_s: float = 20.0, read_cap: int = 65536) -> Outcome:
    """Send one case on its own connection; read the answer (a stream only up to ``read_cap`` bytes)."""
    t0 = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 5)
    except (OSError, asyncio.TimeoutError):
        return Outcome(case, None, closed=False, seconds=time.monotonic() - t0)
    data = b""
    closed = True
    try:
        writer.write(_request_bytes(case, f"{host}:{port}"))
        if case.mode == "slow":
            for i in range(0, len(case.body), max(1, len(case.body) // 5)):
                writer.write(case.body[i:i + max(1, len(case.body) // 5)])
                await writer.drain()
                await asyncio.sleep(0.3)
        elif case.mode != "raw":
            writer.write(case.body)
        await writer.drain()
        deadline = time.monotonic() + limit_s
        while len(data) < read_cap:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                closed = bool(data)       # a stream that answered and is still writing is not a hang
                break
            try:
                chunk = await asyncio.wait_for(reader.read(8192), remaining)
            except asyncio.TimeoutError:
                closed = bool(data)
                break
            if not chunk:
                break
            data += chunk
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()
    status, ctype, body = _parse(data)
    return Outcome(case, status, ctype, body, closed, time.monotonic() - t0)


async def run_fuzz(host: str, port: int, api_key: str, n: int, concurrency: int = 32, seed: int = 0,
                   limit_s: float = 20.0) -> list[Outcome]:
    cases = make_cases(n, api_key, seed)
    gate = asyncio.Semaphore(concurrency)

    async def one(case: Case) -> Outcome:
        async with gate:
            return await send(case, host, port, limit_s)

    return await asyncio.gather(*(one(c) for c in cases))


def summarize(outcomes: list[Outcome]) -> dict:
    # A 503 with a JSON body is the designed "busy, try again" answer (as in the streams row), not a failure.
    busy = [o for o in outcomes if o.status == 503 and o.json_error]
    five = [o for o in outcomes if o.status is not None and o.status >= 500 and o not in busy]
    non_json = [o for o in outcomes if not o.json_error]
    hangs = [o for o in outcomes if not o.closed]
    return {"requests": len(outcomes), "5xx": len(five), "busy": len(busy), "non_json_errors": len(non_json), "hangs": len(hangs),
            "examples": [f"{o.status} {o.case.label} {o.case.method} {o.case.path[:60]!r} {o.body[:120]!r}"
                         for o in (five + non_json + hangs)[:12]]}
