"""``sequent serve`` as a process: it prints its URL, serves the pages on loopback, and stops
cleanly on SIGTERM; a port it cannot have is one line on stderr."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from domain import CurationService
from tests.support.cli import Cli

CHECKOUT = Path(__file__).resolve().parents[1]
STOP_SECONDS = 15


@contextmanager
def serve(*argv: str) -> Iterator[subprocess.Popen[str]]:
    process = subprocess.Popen(
        [sys.executable, "-m", "scripts.cli", "serve", *argv],
        cwd=CHECKOUT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_serve_prints_its_url_serves_the_pages_and_stops_on_sigterm(
    shared_store_url: str,
) -> None:
    svc = CurationService.open(shared_store_url)
    try:
        job_id = svc.create_job({"target": "t"})
    finally:
        svc.close()
    with serve("--db", shared_store_url, "--port", "0") as process:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("sequent console: http://127.0.0.1:"), line
        url = line.split()[2]
        assert httpx.get(url, timeout=10).status_code == 200
        page = httpx.get(f"{url}jobs/{job_id}", timeout=10)
        assert page.status_code == 200
        assert "Queued" in page.text
        assert httpx.get(f"{url}jobs/{job_id}x", timeout=10).status_code == 404
        assert "sequent_jobs" in httpx.get(f"{url}metrics", timeout=10).text
        rebound = httpx.get(url, headers={"Host": "attacker.example"}, timeout=10)
        assert rebound.status_code == 400, "a loopback console answers loopback names only"
        assert httpx.get(url.replace("127.0.0.1", "localhost"), timeout=10).status_code == 200
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=STOP_SECONDS)
        stopped = time.monotonic() - started
    assert process.returncode == 0, err
    assert err == ""
    assert out == ""
    assert stopped < 5
    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=2)


def test_serve_with_json_prints_the_url_as_json(tmp_path: Path) -> None:
    with serve("--db", f"sqlite:///{tmp_path / 'x.db'}", "--port", "0", "--json") as process:
        assert process.stdout is not None
        url = json.loads(process.stdout.readline())["url"]
        assert httpx.get(f"{url}status", timeout=10).status_code == 200
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=STOP_SECONDS)
    assert process.returncode == 0


def test_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path, sequent: Cli) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        ran = sequent("serve", "--db", f"sqlite:///{tmp_path / 'x.db'}", "--port", str(port))
    assert ran.code == 1
    assert f"cannot serve on 127.0.0.1:{port}" in ran.error_line()


@pytest.mark.parametrize("port", ["-1", "65536", "http"])
def test_a_bad_port_is_a_usage_error(sequent: Cli, port: str) -> None:
    ran = sequent("serve", "--port", port)
    assert ran.code == 2
    assert "port" in ran.error_line()
