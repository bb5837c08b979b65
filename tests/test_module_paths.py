"""`sequent invoke --module PATH` where PATH is not a module: a secret file, a directory, a
device, a FIFO, nothing at all. One line on stderr each, naming the path, never quoting the file,
and never reading what is not a regular file."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from integrations.limits import SandboxLimits
from integrations.module_files import ModuleRejected
from integrations.runtime import Runtime
from tests.support.cli import Cli

SECRET = "XYZZY-PLUGH-0xDEADBEEF"
# A module file the user named is bad input.
MODULE_REJECTED_EXIT = 2


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SEQUENT_DB", f"sqlite:///{tmp_path / 'store.db'}")


def refused(sequent: Cli, path: Path, *network: str) -> str:
    ran = sequent("invoke", "--module", str(path), *network, "--json")
    line = ran.error_line()  # exactly one line, "sequent: error: ...", nothing on stdout
    assert ran.code == MODULE_REJECTED_EXIT
    assert str(path) in line
    assert SECRET not in line
    return line


@pytest.mark.parametrize(
    "content",
    [
        f"root:{SECRET}:19000:0:99999:7:::\nuser:x:1000\n".encode(),
        f"(module (func ${SECRET} (unknown.op {SECRET})))\n".encode(),
        f"{SECRET}\n".encode() + bytes(range(256)),
        b"\0as" + SECRET.encode(),
    ],
    ids=["shadow-like", "broken-wat", "binary", "almost-magic"],
)
def test_a_file_that_is_not_a_module_is_named_by_path_and_size_only(
    sequent: Cli, tmp_path: Path, content: bytes
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(content)
    for network in ((), ("--no-network",)):
        line = refused(sequent, secret, *network)
        assert line.endswith(f"{secret}: {len(content)} bytes, not a wasm module or WAT text")
        assert "root:" not in line


def test_a_directory_is_not_a_module(sequent: Cli, tmp_path: Path) -> None:
    for network in ((), ("--no-network",)):
        line = refused(sequent, tmp_path, *network)
        assert line.endswith(f"{tmp_path} is a directory, not a regular file")


def test_a_missing_path_is_unreadable(sequent: Cli, tmp_path: Path) -> None:
    for network in ((), ("--no-network",)):
        line = refused(sequent, tmp_path / "missing.wasm", *network)
        assert line.endswith("missing.wasm: No such file or directory")


def test_a_device_is_refused_without_reading_it(sequent: Cli) -> None:
    line = refused(sequent, Path("/dev/zero"), "--no-network")
    assert line.endswith("/dev/zero is a character device, not a regular file")


@pytest.fixture
def fifo(tmp_path: Path) -> Iterator[Path]:
    """A FIFO, and a writer that opens it after a while: a reader that opened it anyway is
    released (and fails the test) rather than left hanging."""
    path = tmp_path / "fifo"
    os.mkfifo(path)
    done = threading.Event()

    def release() -> None:
        if not done.wait(5):
            os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))

    rescuer = threading.Thread(target=release, daemon=True)
    rescuer.start()
    yield path
    done.set()
    rescuer.join()


def test_a_fifo_is_refused_without_opening_it(sequent: Cli, fifo: Path) -> None:
    line = refused(sequent, fifo, "--no-network")
    assert line.endswith(f"{fifo} is a FIFO, not a regular file")


def test_a_file_whose_size_says_nothing_is_read_no_further_than_the_limit() -> None:
    # /proc files stat as 0 bytes whatever they hold: only the bounded read catches them.
    status = Path("/proc/self/status")
    assert status.stat().st_size == 0
    with pytest.raises(ModuleRejected) as caught:
        Runtime(SandboxLimits(module_bytes=16)).load_file(status)
    assert (caught.value.reason, caught.value.detail) == (
        "too_large",
        f"{status}: more than 16 bytes",
    )
