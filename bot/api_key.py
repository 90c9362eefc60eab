"""The HTTP API key when BOT_API_KEY is not set: generated at first start and kept in the data dir (mode 0600)."""
from __future__ import annotations

import os
import secrets
from pathlib import Path

KEY_FILE = "api_key"


def ensure_api_key(data_dir: Path) -> tuple[str, bool]:
    """The kept key, or a new one written with mode 0600; the flag says it was created now."""
    path = data_dir / KEY_FILE
    try:
        key = path.read_text(encoding="utf-8").strip()
        if key:
            return key, False
    except FileNotFoundError:
        pass
    key = secrets.token_urlsafe(32)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o600)        # O_CREAT's mode is filtered by the umask; the file must stay private regardless
    os.replace(tmp, path)
    return key, True


def curl_example(key: str, host: str, port: int) -> str:
    """A line a user can paste to try the API with the key."""
    shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    shown = f"[{shown}]" if ":" in shown else shown
    return (f"curl -N -H 'X-API-Key: {key}' http://{shown}:{port}/Llama_stream "
            """-d '{"input_data": "Hello!", "session": "try-1"}'""")
