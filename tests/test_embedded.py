"""The supervised embedded database: dies with its parent, leftovers stopped, foreign ports refused, restarts, no lost writes."""
from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from botproc import gone, start_orphan
from conftest import ROOT
from engine.store.embedded import EmbeddedMongo, EmbeddedServerError, running_server_uri
from engine.store.repository import Store

PARENT = """
import asyncio, sys
from pathlib import Path
from engine.store.embedded import EmbeddedMongo

async def main():
    server = EmbeddedMongo(Path(sys.argv[1]))
    await server.start()
    print(server.proc.pid, flush=True)
    await asyncio.sleep(600)

asyncio.run(main())
"""


def _parent(folder: Path, **popen) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen([sys.executable, "-c", PARENT, str(folder)], cwd=ROOT, stdout=subprocess.PIPE,
                            text=True, **popen)
    line = proc.stdout.readline()
    assert line.strip().isdigit(), f"the parent did not start its server: {line!r}"
    return proc, int(line)


@pytest.mark.parametrize("new_session", [False, True])
def test_the_child_dies_with_a_sigkilled_parent(tmp_path, new_session):
    proc, child = _parent(tmp_path / "mongo", start_new_session=new_session)
    assert psutil.pid_exists(child)
    assert running_server_uri(tmp_path) is not None
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    assert gone(child), "the database child outlived its killed parent"
    assert running_server_uri(tmp_path) is None


async def test_a_leftover_server_is_stopped_and_replaced(tmp_path):
    folder = tmp_path / "mongo"
    (folder / "db").mkdir(parents=True)
    port = EmbeddedMongo(folder).port
    orphan = await start_orphan(folder, port)
    try:
        server = EmbeddedMongo(folder)
        await server.start()
        try:
            assert orphan.wait(15) is not None
            assert server.proc.pid != orphan.pid
            info = json.loads((folder / "server.json").read_text())
            assert info["pid"] == server.proc.pid and info["uri"] == server.uri == running_server_uri(tmp_path)
        finally:
            await server.stop()
    finally:
        if orphan.poll() is None:
            orphan.kill()
            orphan.wait()


async def test_a_configured_port_in_use_is_refused(tmp_path):
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        port = foreign.getsockname()[1]
        with pytest.raises(EmbeddedServerError, match=f"port {port} is already in use"):
            await EmbeddedMongo(tmp_path / "mongo", port=port).start()
    assert not (tmp_path / "mongo" / "server.json").exists()


async def test_a_killed_child_is_restarted_on_its_port_and_kept_writes_drain(tmp_path):
    # A slower first restart, so the write below surely meets a dead database (a fast restart and the
    # driver's retry would otherwise take it directly).
    server = EmbeddedMongo(tmp_path / "mongo", first_backoff_s=3.0)
    await server.start()
    store = Store(server.uri, "t", server_selection_timeout_ms=500, outbox_path=tmp_path / "outbox.jsonl")
    try:
        await store.start()
        conv = await store.active_conversation("u1", "test", "chat", None)
        await store.add_message(conv, "user", "before", request_key="r1")
        first = server.proc.pid
        server.proc.send_signal(signal.SIGKILL)
        await server.proc.wait()
        # A finished reply while the database is away is kept, on disk too.
        await store.add_message(conv, "assistant", "while away", request_key="r1", durable=True)
        assert store.pending_writes == 1 and (tmp_path / "outbox.jsonl").stat().st_size > 0
        for _ in range(200):
            if server.restarts and await store.ping() and not store.pending_writes:
                break
            await asyncio.sleep(0.1)
        assert server.restarts == 1 and server.proc.pid != first
        assert store.pending_writes == 0 and not (tmp_path / "outbox.jsonl").exists()
        texts = [m["content"] for m in await store.recent_messages(conv, 10)]
        assert texts == ["before", "while away"]
    finally:
        await store.close()
        await server.stop()
    assert gone(first) and gone(server.proc.pid)


async def test_kept_writes_survive_a_shutdown_and_are_replayed_once(tmp_path):
    server = EmbeddedMongo(tmp_path / "mongo")
    await server.start()
    outbox = tmp_path / "outbox.jsonl"
    store = Store(server.uri, "t", server_selection_timeout_ms=300, outbox_path=outbox)
    await store.start()
    conv = await store.active_conversation("u1", "test", "chat", None)
    await server.stop()
    await store.add_message(conv, "assistant", "kept", request_key="r9", durable=True)
    await store.close()                      # cannot write it: it stays in the file
    assert outbox.exists()
    await server.start()
    try:
        for _ in range(2):                   # a second replay of the same file must not double it
            outbox_copy = outbox.read_text() if outbox.exists() else None
            store = Store(server.uri, "t", outbox_path=outbox)
            await store.start()
            await store.close()
            if outbox_copy:
                outbox.write_text(outbox_copy)
        store = Store(server.uri, "t", outbox_path=outbox)
        await store.start()
        try:
            messages = await store.recent_messages(conv, 10)
            assert [m["content"] for m in messages] == ["kept"]
            assert (await store.find_reply(conv, "r9"))["content"] == "kept"
        finally:
            await store.close()
    finally:
        await server.stop()
