"""Headless Chromium for the tests that look at the console as a person would.

The browser is Debian's ``chromium`` package, never one that Playwright downloads (a browser
build from outside the package registries cannot be fetched here). When it is missing and the
tests run as root with ``apt-get``, ``ensure_chromium`` installs it once — under a lock file,
so parallel test workers never run apt at the same time, and with the outcome written beside
the lock, so a second worker neither repeats a failed install nor waits for nothing.
Playwright's Python package drives it through ``executable_path``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
LAUNCH_ARGS = (
    "--headless",
    "--no-sandbox",  # tests run as root, where Chromium's own sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
APT_SECONDS = 900  # apt-get update plus the package and its libraries, on a slow mirror
# Where the tests keep what a person would look at afterwards (ignored by git, like .sequent/).
ARTEFACTS = Path(__file__).resolve().parents[2] / ".sequent" / "test-artefacts"


def ensure_chromium(lock_dir: Path) -> str | None:
    """Makes sure ``/usr/bin/chromium`` exists; returns None if it does, else why not."""
    if CHROMIUM.exists():
        return None
    lock_dir.mkdir(parents=True, exist_ok=True)
    outcome = lock_dir / "chromium-install.outcome"
    with (lock_dir / "chromium-install.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other workers wait here for the first
        if CHROMIUM.exists():
            return None
        if outcome.exists():  # another worker tried and failed: the same answer, not a retry
            return outcome.read_text()
        problem = _install()
        if problem is not None:
            outcome.write_text(problem)
        return problem


def _install() -> str | None:
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return f"{CHROMIUM} is missing and this is not root with apt-get to install it"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
        problem = _run(command, env)
        if problem is not None:
            return problem
    return None if CHROMIUM.exists() else f"apt-get installed chromium but {CHROMIUM} is missing"


def _run(command: Sequence[str], env: dict[str, str]) -> str | None:
    try:
        done = subprocess.run(
            command,
            env=env,
            capture_output=True,
            text=True,
            timeout=APT_SECONDS,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{' '.join(command)} failed: {exc}"
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        return f"{' '.join(command)} exited {done.returncode}: {tail}"
    return None


def keep_artefact(path: Path, name: str) -> Path:
    """Copies a screenshot the test saved under its tmp_path to ``ARTEFACTS/name``."""
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    target = ARTEFACTS / name
    shutil.copyfile(path, target)
    return target
