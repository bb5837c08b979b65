"""How the long-running commands (``worker``, ``project``) are asked to stop."""

from __future__ import annotations

import signal
import threading


def stop_on_signals() -> threading.Event:
    """An event SIGTERM or SIGINT sets, so the command finishes what it has in flight (a
    dispatcher's runs, a runner's batch) and stops, instead of dying half way through."""
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    return stop
