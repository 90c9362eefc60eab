"""Checks made before anything slow starts, each failing with one line that names the cause."""
from __future__ import annotations

import errno
import socket
from pathlib import Path


class StartupError(Exception):
    """The bot cannot start as configured; the message is one line naming the cause."""


def one_line(e: BaseException) -> str:
    """An exception's message on one line (library messages may span several)."""
    text = " ".join(str(e).split())
    return text or type(e).__name__


def check_data_dir(data_dir: Path) -> None:
    """The data dir exists (it is created) and the bot can write in it."""
    probe = data_dir / ".write-test"
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        with open(probe, "w", encoding="utf-8") as f:
            f.write("ok")
        probe.unlink()
    except OSError as e:
        raise StartupError(f"--data-dir {data_dir}: cannot write there ({e.strerror or e})") from None


def check_port_free(host: str, port: int, what: str) -> None:
    """Fail now, before models load for minutes, if the HTTP server could not listen."""
    if port == 0:
        return
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise StartupError(f"{what}: cannot resolve host {host!r} ({e.strerror or e})") from None
    family, kind, proto, _, addr = infos[0]
    with socket.socket(family, kind, proto) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # as the server will: a TIME_WAIT port is free
        try:
            s.bind(addr)
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise StartupError(f"{what}: port {port} on {host} is already in use by another program; "
                                   "stop it or choose another port") from None
            raise StartupError(f"{what}: cannot listen on {host}:{port} ({e.strerror or e})") from None


def missing_cards_directory(base_dir: Path, directory: str) -> Path | None:
    """The configured cards folder, if it does not exist (the bot then starts with bot.yaml's characters only)."""
    path = Path(directory).expanduser()
    path = path if path.is_absolute() else base_dir / path
    return None if path.is_dir() else path
