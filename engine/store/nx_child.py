"""The embedded database's child process: arrange to die with the bot, then run nx-27017 in this process.

Run by path (``python nx_child.py BOT_PID WATCH_FD NX_ARGS...``) so that it
needs nothing of the project on ``sys.path``. Two guards, because either alone
has gaps: the parent-death signal follows the thread that forked us, and the
watchdog pipe needs this process to be scheduled to notice.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

PR_SET_PDEATHSIG = 1
EXIT_GRACE_S = 5.0


def _watch(fd: int) -> None:
    # The bot holds the write end and never writes: end-of-file means it is gone, however it died.
    while True:
        try:
            if not os.read(fd, 1):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    os.kill(os.getpid(), signal.SIGTERM)     # nx-27017 exits cleanly on SIGTERM (and removes its pid file)
    time.sleep(EXIT_GRACE_S)
    os._exit(1)


def die_with_parent(parent_pid: int, watch_fd: int) -> None:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass                                  # not Linux: the watchdog pipe alone
    if os.getppid() != parent_pid:            # the bot died before the signal was armed
        os._exit(1)
    threading.Thread(target=_watch, args=(watch_fd,), name="bot-watchdog", daemon=True).start()


def main(argv: list[str]) -> int:
    parent_pid, watch_fd, *nx_args = argv
    die_with_parent(int(parent_pid), int(watch_fd))
    from nx_27017.nx_27017 import main as nx_main

    sys.argv = ["nx-27017", *nx_args]
    return nx_main() or 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
