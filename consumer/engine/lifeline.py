"""The engine's lifeline to its consumer: stdin stays open while the consumer lives.

The consumer writes the spec as one JSON line and keeps the pipe open. When the consumer
dies (even by SIGKILL) the kernel closes its end and the engine reads end-of-file: the
engine then stops as if sent SIGTERM (kill its test, remove its worktrees, exit). This
complements the parent-death signal, which a wrapper process between the two would lose.
"""

from __future__ import annotations

import os
import signal
import threading
from typing import BinaryIO


def read_spec_line(stream: BinaryIO) -> str:
    """The first line of ``stream`` (the spec), leaving the stream open."""
    return stream.readline().decode("utf-8", errors="replace")


def stop_on_eof(stream: BinaryIO, sig: int = signal.SIGTERM) -> threading.Thread:
    """Send ``sig`` to this process once ``stream`` reaches end-of-file.

    Runs in a daemon thread that blocks on the pipe; whatever else arrives is ignored.
    """

    def watch() -> None:
        try:
            while stream.read(4096):
                pass
        except (OSError, ValueError):
            pass
        os.kill(os.getpid(), sig)

    thread = threading.Thread(target=watch, name="stdin-lifeline", daemon=True)
    thread.start()
    return thread
