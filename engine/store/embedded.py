"""Run the embedded nx-27017 MongoDB wire-protocol server as a child process on 127.0.0.1."""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import sys
from pathlib import Path

log = logging.getLogger(__name__)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EmbeddedMongo:
    """The child process and its URI; data lives in ``data_dir/db/<database>.db`` and survives restarts."""

    def __init__(self, data_dir: Path, port: int = 0, start_timeout_s: float = 30.0):
        self.data_dir = data_dir
        self.port = port or free_port()
        self.start_timeout_s = start_timeout_s
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def _command(self) -> list[str]:
        exe = shutil.which("nx-27017") or str(Path(sys.executable).with_name("nx-27017"))
        # Own pid and log files: the defaults in /tmp would refuse a second server on the machine.
        return [exe, "--host", "127.0.0.1", "-p", str(self.port), "--data-dir", str(self.data_dir / "db"),
                "--pid-file", str(self.data_dir / "nx-27017.pid"), "--log-file", str(self.data_dir / "mongo.log")]

    async def start(self) -> None:
        (self.data_dir / "db").mkdir(parents=True, exist_ok=True)
        log_path = self.data_dir / "mongo.log"
        with open(self.data_dir / "stdout.log", "ab") as out:
            self.proc = await asyncio.create_subprocess_exec(
                *self._command(), stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,      # Ctrl-C in a terminal goes to the bot, which stops this cleanly
            )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout_s
        while loop.time() < deadline:
            if self.proc.returncode is not None:
                raise RuntimeError(f"the embedded MongoDB server exited at start (see {log_path})")
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.close()
                await writer.wait_closed()
                log.info("embedded MongoDB (nx-27017) on 127.0.0.1:%d, data in %s", self.port, self.data_dir)
                _record_server(self.data_dir, self.proc.pid, self.port, self.uri)
                return
            except OSError:
                await asyncio.sleep(0.1)
        await self.stop()
        raise RuntimeError(f"the embedded MongoDB server did not start within {self.start_timeout_s}s (see {log_path})")

    async def stop(self) -> None:
        (self.data_dir / SERVER_FILE).unlink(missing_ok=True)
        if self.proc is None or self.proc.returncode is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(self.proc.wait(), 10)
        except asyncio.TimeoutError:
            os.killpg(self.proc.pid, signal.SIGKILL)
            await self.proc.wait()


# Other local tools (the terminal chat) find a running bot's server here instead of starting a second one.
SERVER_FILE = "server.json"


def _record_server(data_dir: Path, pid: int, port: int, uri: str) -> None:
    import json

    tmp = data_dir / (SERVER_FILE + ".tmp")
    tmp.write_text(json.dumps({"pid": pid, "port": port, "uri": uri}), encoding="utf-8")
    os.replace(tmp, data_dir / SERVER_FILE)


def running_server_uri(data_dir: Path) -> str | None:
    """The URI of the embedded server a live bot runs on ``data_dir`` (its --data-dir or the mongo/ folder)."""
    import json

    for folder in (Path(data_dir), Path(data_dir) / "mongo"):
        try:
            info = json.loads((folder / SERVER_FILE).read_text(encoding="utf-8"))
            os.kill(int(info["pid"]), 0)         # signal 0: only asks whether the process exists
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if isinstance(info.get("uri"), str):
            return info["uri"]
    return None
