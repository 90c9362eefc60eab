"""OpenAI-compatible server backend: streams /v1/chat/completions from vLLM, llama.cpp, Ollama, TGI or OpenAI."""
from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import threading
from http import HTTPStatus
from pathlib import Path
from typing import Callable
from urllib.parse import urlsplit

import aiohttp

from engine.backends.base import BatchStats, Emit, Finish, Sampling
from engine.settings import OpenAIModel, resolve_model_path

log = logging.getLogger(__name__)

# render() output starts with this: the server applies its own chat template, so the "prompt" this
# backend hands itself is the message list, kept intact as JSON.
MESSAGES_MARK = "\x1eopenai-messages\x1e"
MAX_STOP = 4                  # OpenAI's own limit; the engine's cleaner enforces any further stop strings
# The upstream server's answers worth another try (this backend is an HTTP client of a serving cluster).
RETRY_STATUS = {HTTPStatus.REQUEST_TIMEOUT, HTTPStatus.CONFLICT, HTTPStatus.TOO_MANY_REQUESTS,
                HTTPStatus.INTERNAL_SERVER_ERROR, HTTPStatus.BAD_GATEWAY, HTTPStatus.SERVICE_UNAVAILABLE,
                HTTPStatus.GATEWAY_TIMEOUT}
REFUSED_FIELD = {HTTPStatus.BAD_REQUEST, HTTPStatus.UNPROCESSABLE_ENTITY}
AUTH_FAILED = {HTTPStatus.UNAUTHORIZED, HTTPStatus.FORBIDDEN}
CANCEL_POLL_S = 0.05
PER_MESSAGE_TOKENS = 4        # role markers and separators of a typical chat template


class ServerError(Exception):
    """The server failed in a way worth telling the operator in one line (what, where, what to check)."""

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


def chat_url(base_url: str) -> str:
    """The chat-completions URL of a base URL; a bare host gets the usual /v1."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, not {base_url!r}")
    base = base_url.rstrip("/")
    if parts.path.strip("/") == "":
        base += "/v1"
    return base + "/chat/completions"


# token counting -----------------------------------------------------------------------------------

class _Estimate:
    """No local tokenizer: a cautious estimate (about one token per Hangul syllable, per 3 bytes)."""

    exact = False

    def text(self, text: str) -> int:
        from engine.cards.prompt import estimate_tokens

        return estimate_tokens(text)

    def messages(self, messages: list[dict]) -> int:
        return sum(self.text(m.get("content", "")) + PER_MESSAGE_TOKENS for m in messages) + PER_MESSAGE_TOKENS


class _GGUFTokenizer:
    """A GGUF's vocabulary and chat template (weights not loaded): exact counts for the model the server runs."""

    exact = True

    def __init__(self, path: Path):
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self.llm = Llama(model_path=str(path), vocab_only=True, verbose=False)
        template = self.llm.metadata.get("tokenizer.chat_template")
        self.formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self.llm._model.token_get_text(self.llm.token_eos()),
            bos_token=self.llm._model.token_get_text(self.llm.token_bos()),
        ) if template else None

    def text(self, text: str) -> int:
        return len(self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True))

    def messages(self, messages: list[dict]) -> int:
        if self.formatter is None:
            return sum(self.text(m.get("content", "")) + PER_MESSAGE_TOKENS for m in messages)
        return self.text(self.formatter(messages=messages).prompt)

    def close(self) -> None:
        self.llm.close()


class _HFTokenizer:
    """A local Hugging Face tokenizer folder (with its chat template)."""

    exact = True

    def __init__(self, path: Path):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)

    def text(self, text: str) -> int:
        return len(self.tok.encode(text, add_special_tokens=False))

    def messages(self, messages: list[dict]) -> int:
        if not getattr(self.tok, "chat_template", None):
            return sum(self.text(m.get("content", "")) + PER_MESSAGE_TOKENS for m in messages)
        return self.text(self.tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))


def make_counter(spec: str | None, base_dir: Path):
    if not spec:
        return _Estimate()
    path = resolve_model_path(spec, base_dir)
    if path.is_file() and path.suffix == ".gguf":
        return _GGUFTokenizer(path)
    if path.is_dir():
        return _HFTokenizer(path)
    raise ValueError(f"tokenizer: {path} is neither a .gguf file nor a tokenizer folder")


# the client ---------------------------------------------------------------------------------------

class _LoopThread:
    """A private event loop in a daemon thread: HTTP streams live there so cancellation can close them at once."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def submit(self, coro) -> concurrent.futures.Future:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close(self, last=None, timeout: float = 5.0) -> None:
        if self.loop.is_closed():
            return
        if last is not None:
            try:
                self.submit(last).result(timeout)
            except Exception:  # noqa: BLE001 - closing must not fail the shutdown
                log.debug("closing the HTTP session failed", exc_info=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)
        if not self.thread.is_alive():
            self.loop.close()


def _error_message(status: int, body: str) -> str:
    try:
        err = json.loads(body).get("error")
        detail = err.get("message") if isinstance(err, dict) else (err or body)
    except (ValueError, AttributeError):
        detail = body
    return str(detail).strip()[:300] or "(no body)"


class OpenAIGenerator:
    """A model served by an OpenAI-compatible server, behind the same protocol as a local model."""

    def __init__(self, cfg: OpenAIModel, base_dir: Path, api_key: str | None = None):
        self.cfg = cfg
        self.n_ctx = cfg.n_ctx
        self.max_concurrent = cfg.concurrency     # parallel requests to the server
        self.url = chat_url(cfg.base_url)
        self.headers = {"Accept": "text/event-stream"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.counter = make_counter(cfg.tokenizer, base_dir)
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=cfg.connect_timeout_s,
                                             sock_read=cfg.read_timeout_s)
        self._io = _LoopThread(f"openai-{cfg.model}")
        self._session: aiohttp.ClientSession | None = None
        self._ask_usage = True     # dropped if the server refuses stream_options

    # prompts ------------------------------------------------------------------------------------

    def render(self, messages: list[dict[str, str]]) -> str:
        return MESSAGES_MARK + json.dumps([{"role": m["role"], "content": m["content"]} for m in messages],
                                          ensure_ascii=False)

    @staticmethod
    def messages_of(prompt: str) -> list[dict[str, str]]:
        if prompt.startswith(MESSAGES_MARK):
            return json.loads(prompt[len(MESSAGES_MARK):])
        return [{"role": "user", "content": prompt}]

    def count_tokens(self, text: str) -> int:
        if text.startswith(MESSAGES_MARK):
            return self.counter.messages(self.messages_of(text))
        return self.counter.text(text)

    # generation ---------------------------------------------------------------------------------

    def _body(self, messages: list[dict], sampling: Sampling) -> dict:
        body = {
            "model": self.cfg.model,
            "messages": messages,
            "stream": True,
            "max_tokens": sampling.max_new_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
        }
        if sampling.stop:
            body["stop"] = list(sampling.stop[:MAX_STOP])
        if sampling.seed is not None:
            body["seed"] = sampling.seed
        if self._ask_usage:
            body["stream_options"] = {"include_usage": True}
        return body

    def generate(self, prompt: str, sampling: Sampling, cancel: threading.Event, emit: Emit) -> Finish:
        messages = self.messages_of(prompt)
        finish = Finish(prompt_tokens=self.count_tokens(prompt))
        future = self._io.submit(self._generate(messages, sampling, emit, finish, cancel))
        while True:
            try:
                future.result(timeout=CANCEL_POLL_S)
                return finish
            except concurrent.futures.TimeoutError:
                if cancel.is_set():
                    future.cancel()          # cancels the task, which closes the HTTP stream
                    finish.reason = "cancelled"
                    return finish

    async def _generate(self, messages: list[dict], sampling: Sampling, emit: Emit, finish: Finish,
                        cancel: threading.Event) -> None:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        sent: list[str] = []

        def forward(text: str) -> None:
            if not cancel.is_set():
                sent.append(text)
                emit(text)

        attempt = 0
        while True:
            finish.tokens, finish.reason = 0, "stop"
            try:
                await self._stream(self._body(messages, sampling), forward, finish)
                break
            except ServerError as e:
                # Once text has reached the user, a retry would repeat or contradict it.
                if sent or not e.retryable or attempt >= self.cfg.retries:
                    raise ServerError(f"{e} (after {attempt + 1} attempt{'s' if attempt else ''})"
                                      if attempt else str(e)) from None
                wait = self.cfg.backoff_s * (2 ** attempt)
                log.warning("%s; retrying in %.2fs", e, wait)
                await asyncio.sleep(wait)
                attempt += 1
        if not finish.extra.get("usage"):
            text = "".join(sent)
            finish.tokens = self.counter.text(text) if self.counter.exact else finish.tokens

    async def _stream(self, body: dict, forward: Callable[[str], None], finish: Finish) -> None:
        """One request; raises ServerError (retryable only if nothing was received yet)."""
        where = self.url
        try:
            async with self._session.post(self.url, json=body, headers=self.headers) as resp:
                if resp.status != HTTPStatus.OK:
                    detail = _error_message(resp.status, await resp.text(errors="replace"))
                    if resp.status in REFUSED_FIELD and "stream_options" in detail and self._ask_usage:
                        self._ask_usage = False      # an older server: count tokens ourselves
                        raise ServerError(f"{where} refused stream_options", retryable=True)
                    hint = " (check the API key's environment variable)" if resp.status in AUTH_FAILED else ""
                    raise ServerError(f"{where} answered HTTP {resp.status}: {detail}{hint}",
                                      retryable=resp.status in RETRY_STATUS)
                try:
                    await self._read_events(resp, forward, finish)
                except BaseException:
                    resp.close()         # never hand a half-read connection back to the pool
                    raise
        except ServerError:
            raise
        except aiohttp.ConnectionTimeoutError:
            raise ServerError(f"cannot connect to {where} within {self.cfg.connect_timeout_s:g}s "
                              "(connect_timeout_s)", retryable=True) from None
        except asyncio.TimeoutError:
            raise ServerError(f"{where} sent nothing for {self.cfg.read_timeout_s:g}s (read_timeout_s) "
                              f"after {finish.tokens} chunks", retryable=finish.tokens == 0) from None
        except aiohttp.ClientConnectorError as e:
            raise ServerError(f"cannot connect to {where}: {e.os_error or e}", retryable=True) from None
        except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as e:
            raise ServerError(f"{where} closed the stream after {finish.tokens} chunks: {type(e).__name__}: {e}",
                              retryable=finish.tokens == 0) from None
        except aiohttp.ClientError as e:
            raise ServerError(f"{where}: {type(e).__name__}: {e}", retryable=finish.tokens == 0) from None

    async def _read_events(self, resp: aiohttp.ClientResponse, forward: Callable[[str], None],
                           finish: Finish) -> None:
        ended = False
        async for raw in resp.content:
            line = raw.strip()
            if not line.startswith(b"data:"):
                continue                      # blank separators, ": ping" comments, event: lines
            data = line[5:].strip()
            if data == b"[DONE]":
                return
            try:
                event = json.loads(data)
            except ValueError:
                raise ServerError(f"{self.url} sent a stream event that is not JSON: {data[:100]!r}") from None
            if event.get("error"):
                raise ServerError(f"{self.url} reported an error mid-stream: "
                                  f"{_error_message(HTTPStatus.INTERNAL_SERVER_ERROR, json.dumps(event))}")
            usage = event.get("usage")
            for choice in event.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    finish.tokens += 1          # chunks, until the server's usage (if any) says tokens
                    forward(text)
                reason = choice.get("finish_reason")
                if reason:
                    ended = True
                    finish.reason = "length" if reason == "length" else "stop"
            if usage:                         # OpenAI and vLLM send it last, with no choices
                finish.extra["usage"] = usage
                finish.prompt_tokens = usage.get("prompt_tokens", finish.prompt_tokens)
                finish.tokens = usage.get("completion_tokens", finish.tokens)
        if not ended:
            raise ServerError(f"{self.url} ended the stream without finishing the reply "
                              f"after {finish.tokens} chunks", retryable=finish.tokens == 0)

    # life cycle ---------------------------------------------------------------------------------

    def batch_stats(self) -> BatchStats:
        return BatchStats()

    def info(self) -> dict:
        return {"backend": "openai", "model": self.cfg.model, "base_url": self.cfg.base_url, "n_ctx": self.n_ctx,
                "tokenizer": self.cfg.tokenizer or "estimate"}

    def close(self) -> None:
        async def shut() -> None:
            if self._session is not None:
                await self._session.close()

        self._io.close(shut())
        if hasattr(self.counter, "close"):
            self.counter.close()
