"""Turning what a user or a test names as a module into wasm bytes, safely: only a regular file
is read and never past the module limit, and a refusal names the path and size but never the
content (a module path may name any file, ``/etc/shadow`` included).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Final

from wasmtime import WasmtimeError, wat2wasm

from domain.errors import SequentError

WASM_MAGIC: Final = b"\0asm"


class ModuleRejected(SequentError):
    """The bytes cannot be a module. ``reason``: too_large, not_wasm, invalid, unreadable or
    not_a_file. The message never quotes the bytes: a module path may name any file."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"module rejected ({reason}): {detail}")


def read_module(path: Path, max_bytes: int) -> bytes:
    """A module file's bytes. Only a regular file is read: a directory, device, FIFO or socket
    is refused from its ``stat`` before it is opened (reading /dev/zero never ends, opening a
    FIFO blocks), and checked again on the opened descriptor in case the path changed in
    between. At most ``max_bytes + 1`` bytes are read, so a file that grew is refused too."""
    try:
        _check_module_file(path, path.stat(), max_bytes)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
        with os.fdopen(fd, "rb") as file:
            _check_module_file(path, os.fstat(file.fileno()), max_bytes)
            data = file.read(max_bytes + 1)
    except OSError as exc:
        why = exc.strerror or type(exc).__name__
        raise ModuleRejected("unreadable", f"{path}: {why}") from None
    if len(data) > max_bytes:
        raise ModuleRejected("too_large", f"{path}: more than {max_bytes} bytes")
    return data


# stat file type -> what to call it when refusing it
NOT_FILES: Final[tuple[tuple[Callable[[int], bool], str], ...]] = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
)


def _check_module_file(path: Path, info: os.stat_result, max_bytes: int) -> None:
    if not stat.S_ISREG(info.st_mode):
        kind = next((name for test, name in NOT_FILES if test(info.st_mode)), "not a file")
        raise ModuleRejected("not_a_file", f"{path} is {kind}, not a regular file")
    if info.st_size > max_bytes:
        raise ModuleRejected("too_large", f"{path}: {info.st_size} bytes exceeds {max_bytes}")


def to_wasm(source: bytes | bytearray | str, max_bytes: int) -> bytes:
    """The wasm binary for ``source`` (binary or WAT), after the size check. A source that is
    neither is described by its size alone: wat2wasm's error would quote it, and it may be any
    file someone pointed a module path at."""
    if len(source) > max_bytes:
        raise ModuleRejected("too_large", f"{len(source)} bytes exceeds the {max_bytes}-byte limit")
    if isinstance(source, bytes | bytearray) and bytes(source[:4]) == WASM_MAGIC:
        return bytes(source)
    not_wasm = ModuleRejected("not_wasm", f"{len(source)} bytes, not a wasm module or WAT text")
    try:
        text = source if isinstance(source, str) else bytes(source).decode("utf-8")
        wasm = bytes(wat2wasm(text))
    except (UnicodeDecodeError, WasmtimeError):
        raise not_wasm from None
    if len(wasm) > max_bytes:
        raise ModuleRejected("too_large", f"{len(wasm)} bytes exceeds the {max_bytes}-byte limit")
    return wasm
