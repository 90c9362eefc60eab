"""Run the embedded nx-27017 MongoDB wire-protocol server as a supervised child process on 127.0.0.1.

The child dies with the bot (engine/store/nx_child.py), a leftover server of an
earlier run on the same data dir is identified and stopped before a new one
starts, a configured port that is already taken is refused, and a child that
dies while the bot runs is restarted on the same port so the driver reconnects.
``<data_dir>/server.json`` names the running server for other local tools.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

CHILD_SCRIPT = Path(__file__).with_name("nx_child.py")
SERVER_FILE = "server.json"
PID_FILE = "nx-27017.pid"
LOG_FILE = "mongo.log"
STDOUT_FILE = "stdout.log"
STOP_TIMEOUT_S = 10.0
STABLE_RUN_S = 30.0        # a child that ran this long resets the restart back-off


class EmbeddedServerError(RuntimeError):
    """The embedded server cannot run as configured; the message is one line naming the cause."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something already accepts connections on the port."""
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def is_our_server(pid: int, db_dir: Path) -> bool:
    """Whether ``pid`` is an nx-27017 server (ours or a bare one) serving exactly ``db_dir``."""
    args = _cmdline(pid)
    if not any(Path(a).name in ("nx-27017", CHILD_SCRIPT.name) for a in args):
        return False
    try:
        return Path(args[args.index("--data-dir") + 1]).resolve() == db_dir.resolve()
    except (ValueError, IndexError):
        return False


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _parent_of(pid: int) -> int | None:
    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return None


def running_server_uri(data_dir: Path) -> str | None:
    """The URI of a live embedded server of ours on ``data_dir`` (the bot's --data-dir or its mongo/ folder).

    Verified by the recorded pid and that process's command line, so a stale
    file or a recycled pid never yields a URI.
    """
    data_dir = Path(data_dir)
    for folder in (data_dir, data_dir / "mongo"):
        info = _read_json(folder / SERVER_FILE)
        pid, uri = info.get("pid"), info.get("uri")
        if isinstance(pid, int) and isinstance(uri, str) and _alive(pid) and is_our_server(pid, folder / "db"):
            return uri
    return None


async def _terminate(pid: int, group: bool) -> None:
    kill = os.killpg if group else os.kill
    try:
        kill(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        return
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while _alive(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    if _alive(pid):
        try:
            kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class EmbeddedMongo:
    """The supervised child process and its URI; data lives in ``data_dir/db/<database>.db`` and survives restarts."""

    def __init__(self, data_dir: Path, port: int = 0, start_timeout_s: float = 30.0, max_backoff_s: float = 30.0,
                 first_backoff_s: float = 0.5):
        self.data_dir = Path(data_dir)
        self.configured_port = port
        self.port = port or free_port()
        self.start_timeout_s = start_timeout_s
        self.max_backoff_s = max_backoff_s
        self.first_backoff_s = first_backoff_s
        self.proc: asyncio.subprocess.Process | None = None
        self.restarts = 0
        self._watch_w: int | None = None
        self._supervisor: asyncio.Task | None = None
        self._stopping = False

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    @property
    def db_dir(self) -> Path:
        return self.data_dir / "db"

    @property
    def log_path(self) -> Path:
        return self.data_dir / LOG_FILE

    def _command(self, watch_fd: int) -> list[str]:
        # Own pid and log files: the defaults in /tmp would refuse a second server on the machine.
        return [sys.executable, str(CHILD_SCRIPT), str(os.getpid()), str(watch_fd),
                "--host", "127.0.0.1", "-p", str(self.port), "--data-dir", str(self.db_dir),
                "--pid-file", str(self.data_dir / PID_FILE), "--log-file", str(self.log_path)]

    # start ----------------------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            self.db_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EmbeddedServerError(f"cannot create the database folder {self.db_dir}: {e.strerror or e}") from None
        await self.stop_leftover()
        if self.configured_port and port_in_use(self.port):
            raise EmbeddedServerError(
                f"mongo.embedded.port {self.port} is already in use by another program; the bot never shares "
                "a database server it did not start: choose a free port, or 0 for any free port")
        self._stopping = False
        await self._launch()
        self._supervisor = asyncio.create_task(self._supervise(), name="embedded-mongo-supervisor")
        log.info("embedded MongoDB (nx-27017) on 127.0.0.1:%d, data in %s", self.port, self.data_dir)

    async def stop_leftover(self) -> None:
        """Stop a server an earlier, killed run left on this data dir; refuse if a live bot still owns it."""
        info = _read_json(self.data_dir / SERVER_FILE)
        pids = {p for p in (info.get("pid"), _read_pid(self.data_dir / PID_FILE)) if isinstance(p, int)}
        for pid in pids:
            if pid == os.getpid() or not _alive(pid) or not is_our_server(pid, self.db_dir):
                continue
            owner = info.get("bot_pid")
            if isinstance(owner, int) and owner != os.getpid() and _alive(owner) and _parent_of(pid) == owner:
                raise EmbeddedServerError(
                    f"another bot (pid {owner}) is running on the data dir {self.data_dir.parent}; "
                    "stop it first or use another --data-dir")
            log.warning("stopping a leftover embedded MongoDB server (pid %d) from an earlier run", pid)
            await _terminate(pid, group=False)
        for name in (SERVER_FILE, PID_FILE):
            (self.data_dir / name).unlink(missing_ok=True)

    async def _launch(self) -> None:
        read_fd, write_fd = os.pipe()
        try:
            with open(self.data_dir / STDOUT_FILE, "ab") as out:
                self.proc = await asyncio.create_subprocess_exec(
                    *self._command(read_fd), stdout=out, stderr=out, stdin=asyncio.subprocess.DEVNULL,
                    pass_fds=(read_fd,),
                    start_new_session=True,  # Ctrl-C in a terminal goes to the bot, which stops this cleanly
                )
        except OSError as e:
            os.close(write_fd)
            raise EmbeddedServerError(f"cannot start the embedded MongoDB server: {e.strerror or e}") from None
        finally:
            os.close(read_fd)
        self._close_watch()
        self._watch_w = write_fd
        await self._wait_listening()
        self._record()

    async def _wait_listening(self) -> None:
        """Wait until our child (not some other process) listens on the port."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout_s
        while loop.time() < deadline:
            if self.proc.returncode is not None:
                raise EmbeddedServerError(f"the embedded MongoDB server exited at start (code {self.proc.returncode}); "
                                          f"see {self.log_path} and {self.data_dir / STDOUT_FILE}")
            if self._child_listens():
                return
            await asyncio.sleep(0.1)
        await self._stop_child()
        raise EmbeddedServerError(f"the embedded MongoDB server did not start within {self.start_timeout_s:g}s; "
                                  f"see {self.log_path}")

    def _child_listens(self) -> bool:
        try:
            conns = psutil.Process(self.proc.pid).net_connections(kind="tcp")
        except psutil.Error:
            return False
        return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == self.port for c in conns)

    def _record(self) -> None:
        info = {"pid": self.proc.pid, "port": self.port, "uri": self.uri, "bot_pid": os.getpid()}
        tmp = self.data_dir / (SERVER_FILE + ".tmp")
        try:
            tmp.write_text(json.dumps(info), encoding="utf-8")
            os.replace(tmp, self.data_dir / SERVER_FILE)
        except OSError as e:      # only other tools read it: the server itself is fine
            log.warning("cannot write %s: %s", self.data_dir / SERVER_FILE, e)

    # supervision ----------------------------------------------------------------------------------

    async def _supervise(self) -> None:
        delay = self.first_backoff_s
        while not self._stopping:
            started = time.monotonic()
            code = await self.proc.wait()
            if self._stopping:
                return
            if time.monotonic() - started > STABLE_RUN_S:
                delay = self.first_backoff_s
            log.error("the embedded MongoDB server exited (code %s); restarting it on port %d (log: %s)",
                      code, self.port, self.log_path)
            while not self._stopping:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff_s)
                try:
                    await self._launch()
                except EmbeddedServerError as e:
                    log.debug("restart failed: %s", e)
                    continue
                self.restarts += 1
                log.info("the embedded MongoDB server is back on port %d", self.port)
                break

    # stop -----------------------------------------------------------------------------------------

    async def _stop_child(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            await _terminate(self.proc.pid, group=True)
            try:
                await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
            except asyncio.TimeoutError:
                log.error("the embedded MongoDB server (pid %d) did not stop", self.proc.pid)
        self._close_watch()

    def _close_watch(self) -> None:
        if self._watch_w is not None:
            os.close(self._watch_w)
            self._watch_w = None

    async def stop(self) -> None:
        self._stopping = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            await asyncio.gather(self._supervisor, return_exceptions=True)
            self._supervisor = None
        await self._stop_child()
        (self.data_dir / SERVER_FILE).unlink(missing_ok=True)
