"""``sequent worker`` as the real process a measurement starts, watches and stops: spawned as
``python -m scripts.cli worker --db URL --json ...`` (this interpreter, so this checkout), its
stderr kept in a file, its peak RSS read from /proc, stopped by SIGTERM, and its stats (the
``DispatchStats`` it prints on a clean stop) read back from its stdout.

A measurement sees a worker only from outside, through the store and these: whatever the worker
does inside (fold the log, read a work table) is what gets measured.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from integrations.modules.build import PROJECT_ROOT

STOP_SECONDS = 60.0  # a SIGTERMed worker finishes what is in flight, then prints its stats
READY_LINE = "sequent worker: metrics at"  # printed once the store is open and the module loaded


@dataclass
class WorkerProcess:
    worker_id: str
    process: subprocess.Popen[str]
    log: Path
    spawned_at: float  # time.perf_counter() just before the spawn

    @property
    def pid(self) -> int:
        return self.process.pid

    def peak_rss_mb(self) -> float | None:
        """The worker's peak resident set so far (VmHWM), in MB; None once it has gone."""
        try:
            status = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None

    def ready(self) -> bool:
        """Whether it has said it serves metrics (only with ``metrics=True``)."""
        return READY_LINE in self.log.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """For a measurement that failed part way: no stats wanted, nothing left running."""
        if self.alive():
            self.process.kill()
        self.process.communicate()

    def stop(self) -> dict[str, Any]:
        """SIGTERM, then its stats; a worker that does not stop in STOP_SECONDS is killed and
        that is an error, as is one that failed."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
        try:
            out, _ = self.process.communicate(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError(
                f"worker {self.worker_id} did not stop: {self.last_log_line()}"
            ) from None
        if self.process.returncode != 0:
            raise RuntimeError(
                f"worker {self.worker_id} failed ({self.process.returncode}): "
                f"{self.last_log_line()}"
            )
        stats: dict[str, Any] = json.loads(out)
        return stats

    def last_log_line(self) -> str:
        lines = self.log.read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else "(nothing on stderr)"


def spawn_worker(
    url: str, worker_id: str, logs: Path, extra: Sequence[str] = (), *, metrics: bool = False
) -> WorkerProcess:
    """Starts ``sequent worker`` on ``url`` (no periodic reconciliation: a measurement's run is
    short and its session service local). With ``metrics`` it serves them on a free port, and
    says so once it is up (``WorkerProcess.ready``)."""
    log = logs / f"{worker_id}.log"
    argv = [sys.executable, "-m", "scripts.cli", "worker", "--db", url, "--json",
            "--worker-id", worker_id, "--reconcile-every", "0", *extra]  # fmt: skip
    if metrics:
        argv += ["--metrics-port", "0"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), *sys.path[1:]])}
    with log.open("w") as stderr:
        spawned_at = time.perf_counter()
        process = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
        )  # fmt: skip
    return WorkerProcess(worker_id, process, log, spawned_at)


def wait_until(
    done: Callable[[], bool],
    workers: Sequence[WorkerProcess],
    timeout: float,
    what: str,
    interval: float = 0.01,
) -> float:
    """Polls ``done`` every ``interval`` until it is true; returns time.perf_counter() then.
    A worker that exits meanwhile, or ``timeout`` seconds passing, is an error naming ``what``."""
    give_up = time.perf_counter() + timeout
    while not done():
        for worker in workers:
            if not worker.alive():
                raise RuntimeError(
                    f"worker {worker.worker_id} exited waiting for {what}: {worker.last_log_line()}"
                )
        if time.perf_counter() > give_up:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.perf_counter()
