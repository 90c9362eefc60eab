"""Start-up as a user meets it: each failure is one line naming the cause; the generated API key; the log file."""
from __future__ import annotations

import logging
import logging.handlers
import re
import socket
import stat
import subprocess
import sys

import aiohttp
import pytest

from bot.api_key import ensure_api_key
from bot.config import LoggingConfig
from bot.logs import setup_logging
from botproc import ROOT, bot_env, bot_log, fast_config, start_bot, stop_bot, wait_health
from conftest import free_port

LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ (INFO|WARNING) ")


def run_bot(*args: str, config_text: str | None = None, tmp=None) -> subprocess.CompletedProcess:
    if config_text is not None:
        (tmp / "bot.yaml").write_text(config_text, encoding="utf-8")
        args = ("--config", str(tmp / "bot.yaml"), *args)
    return subprocess.run([sys.executable, "-m", "bot", *args], cwd=ROOT, env=bot_env(), capture_output=True,
                          text=True, timeout=180)


def the_one_line(result: subprocess.CompletedProcess) -> str:
    """The failure's line: everything else printed must be ordinary progress log lines."""
    assert result.returncode != 0, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    other = [line for line in result.stderr.splitlines() if line.strip() and not LOG_LINE.match(line)]
    assert len(other) == 1, result.stderr
    return other[0]


def yaml_with(old: str, new: str) -> str:
    text = (ROOT / "bot.yaml").read_text(encoding="utf-8")
    assert old in text
    return text.replace(old, new, 1)


def test_an_http_port_out_of_range_is_one_line():
    line = the_one_line(run_bot("--http-port", "99999"))
    assert "--http-port" in line and "99999" in line


def test_an_address_that_is_not_an_ip_is_refused_at_load(tmp_path):
    result = run_bot(config_text=yaml_with("allow_ips: []", 'allow_ips: ["not-an-ip"]'), tmp=tmp_path)
    line = the_one_line(result)
    assert result.returncode == 2 and "http.allow_ips" in line and "not-an-ip" in line


def test_an_unwritable_data_dir_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    line = the_one_line(run_bot("--data-dir", str(tmp_path / "file" / "data")))
    assert "--data-dir" in line and "cannot write" in line


def test_an_http_port_in_use_is_one_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        line = the_one_line(run_bot("--http-port", str(port), "--data-dir", str(tmp_path / "data")))
    assert f"port {port}" in line and "already in use" in line


def test_a_configured_embedded_port_in_use_is_refused(tmp_path):
    with socket.socket() as foreign:
        foreign.bind(("127.0.0.1", 0))
        foreign.listen()
        port = foreign.getsockname()[1]
        config = yaml_with("    port: 0                   # 0: any free port on 127.0.0.1", f"    port: {port}")
        result = run_bot("--http-port", "0", "--data-dir", str(tmp_path / "data"), config_text=config, tmp=tmp_path)
    line = the_one_line(result)
    assert f"mongo.embedded.port {port} is already in use" in line


def test_an_embedded_server_that_cannot_start_names_its_log(tmp_path):
    (tmp_path / "data" / "mongo" / "mongo.log").mkdir(parents=True)     # nx-27017 cannot open its log file
    line = the_one_line(run_bot("--http-port", "0", "--data-dir", str(tmp_path / "data")))
    assert "embedded MongoDB server exited at start" in line and str(tmp_path / "data" / "mongo" / "mongo.log") in line


def test_cuda_without_a_gpu_is_one_line(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    config = yaml_with("    device: cpu               #", "    device: cuda              #")
    line = the_one_line(run_bot("--http-port", "0", "--data-dir", str(tmp_path / "data"), config_text=config,
                                tmp=tmp_path))
    assert "models.chat.device is cuda" in line and "no CUDA GPU" in line


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_first_start_generates_a_private_key_later_starts_reuse_it(tmp_path):
    """Also: a missing cards folder is one warning line, and logging.file writes under the data dir."""
    config = fast_config(tmp_path, {"cards": {"directory": "no-such-cards"},
                                    "logging": {"level": "info", "file": "logs/bot.log", "max_bytes": 100000}})
    data, port = tmp_path / "data", free_port()
    url = f"http://127.0.0.1:{port}"
    keys = []
    for start in range(2):
        proc = start_bot(data, port, "--config", str(config))
        try:
            await wait_health(url, proc)
            async with aiohttp.ClientSession() as s:
                async with s.get(url + "/conversations/nobody") as r:
                    assert r.status == 401
                key = (data / "api_key").read_text().strip()
                async with s.get(url + "/conversations/nobody", headers={"X-API-Key": key}) as r:
                    assert r.status == 404
            keys.append(key)
        finally:
            assert stop_bot(proc) == 0
    out = bot_log(data)
    assert keys[0] == keys[1] and len(keys[0]) >= 32
    assert stat.S_IMODE((data / "api_key").stat().st_mode) == 0o600
    printed = [line for line in out.splitlines() if line.startswith("Try it: curl ")]
    assert len(printed) == 1 and f"X-API-Key: {keys[0]}" in printed[0] and f":{port}/" in printed[0]
    warnings = [line for line in out.splitlines() if "cards.directory" in line]
    assert len(warnings) == 2 and "no-such-cards does not exist" in warnings[0]   # one per start
    logged = (data / "logs" / "bot.log").read_text()
    assert logged.count(" INFO bot.app: ready") == 2


def test_the_api_key_is_private_and_kept(tmp_path):
    key, created = ensure_api_key(tmp_path)
    assert created and len(key) >= 32
    assert stat.S_IMODE((tmp_path / "api_key").stat().st_mode) == 0o600
    assert ensure_api_key(tmp_path) == (key, False)


def test_log_level_option_overrides_the_file_setting(tmp_path):
    root = logging.getLogger()
    saved = root.level, list(root.handlers)
    try:
        path = setup_logging(LoggingConfig(level="WARNING", file="logs/bot.log", max_bytes=4096, backups=1),
                             tmp_path, "DEBUG")
        assert path == tmp_path / "logs" / "bot.log" and root.level == logging.DEBUG
        logging.getLogger("bot.test").debug("a debug line")
        for h in root.handlers:
            h.flush()
        assert "a debug line" in path.read_text()
        assert any(isinstance(h, logging.handlers.RotatingFileHandler) and h.maxBytes == 4096 for h in root.handlers)
    finally:
        for h in root.handlers:
            if h not in saved[1]:
                h.close()
        root.handlers[:] = saved[1]
        root.setLevel(saved[0])
