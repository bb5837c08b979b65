"""Reproducible build of the ``build_session_message`` guest module (DESIGN.md §3).

The source is Zig (``build_session_message/main.zig``) compiled to ``wasm32-freestanding`` with the
``ziglang`` package from PyPI, so the compiler is a pinned Python dependency, not a system tool.

Built modules are content-addressed: the cache key is the sha256 of every source file, the compiler
version and the compiler flags, and the module is written once to ``<dir>/<name>-<key>.wasm``.
``<dir>`` is ``$SEQUENT_MODULE_DIR`` if set, else ``.sequent/modules`` under the project root. The
first run builds it (a few seconds), later runs reuse the file. Each build runs in a fresh,
private zig cache and is stripped, so two builds of the same source are byte-identical.

``python -m integrations.modules.build [--out-dir DIR] [--force]`` prints the path and sha256.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODULE_NAME = "build_session_message"
SOURCE_DIR = Path(__file__).resolve().parent / MODULE_NAME
ENTRY = "main.zig"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
MODULE_DIR_ENV = "SEQUENT_MODULE_DIR"
BUILD_TIMEOUT_SECONDS = 300.0

# Part of the cache key: changing a flag rebuilds.
ZIG_FLAGS: tuple[str, ...] = (
    "-target",
    "wasm32-freestanding",
    "-fno-entry",
    "-O",
    "ReleaseSmall",
    "-fstrip",
    "-fsingle-threaded",
    # The shadow stack (wasm-ld's default is 1 MiB) is part of the initial memory, which the host
    # keeps resident between runs; 64 KiB is far more than a run nests (values are at most
    # domain.values.MAX_DEPTH deep), and overflowing it traps.
    "--stack",
    "65536",
    "--export=run",
    "--export=alloc",
)


class ModuleBuildError(RuntimeError):
    """The guest module could not be built (compiler missing, compile error, timeout)."""


def _zig_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "ziglang", *args]


@functools.cache
def zig_version() -> str:
    """Version of the ``ziglang`` compiler; raises ModuleBuildError if it is not installed."""
    try:
        done = subprocess.run(
            _zig_command("version"), capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ModuleBuildError(f"cannot run the zig compiler: {exc}") from exc
    if done.returncode != 0:
        raise ModuleBuildError(
            "the zig compiler is unavailable (pip install ziglang): "
            + (done.stderr.strip() or done.stdout.strip())
        )
    return done.stdout.strip()


def source_files(source_dir: Path = SOURCE_DIR) -> list[Path]:
    """Every file the build reads, in a stable order."""
    return sorted(p for p in source_dir.rglob("*.zig") if p.is_file())


def cache_key(source_dir: Path = SOURCE_DIR) -> str:
    """sha256 over the sources (relative path and bytes), the compiler version and the flags."""
    h = hashlib.sha256()
    h.update(b"sequent-guest-build-v1\0")
    h.update(zig_version().encode() + b"\0")
    h.update("\0".join(ZIG_FLAGS).encode() + b"\0")
    for path in source_files(source_dir):
        data = path.read_bytes()
        h.update(path.relative_to(source_dir).as_posix().encode() + b"\0")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def module_dir() -> Path:
    """Where built modules are cached: ``$SEQUENT_MODULE_DIR`` or ``<project>/.sequent/modules``."""
    configured = os.environ.get(MODULE_DIR_ENV)
    return Path(configured) if configured else PROJECT_ROOT / ".sequent" / "modules"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def compile_module(destination: Path, source_dir: Path = SOURCE_DIR) -> None:
    """Compile the module into ``destination`` (atomically) in a fresh, private zig cache."""
    destination = destination.absolute()  # zig runs in the source folder
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="zig-build-", dir=destination.parent) as tmp:
        work = Path(tmp)
        out = work / f"{MODULE_NAME}.wasm"
        command = _zig_command(
            "build-exe",
            ENTRY,
            *ZIG_FLAGS,
            "--name",
            MODULE_NAME,
            "--cache-dir",
            str(work / "local-cache"),
            "--global-cache-dir",
            str(work / "global-cache"),
            f"-femit-bin={out}",
        )
        try:
            done = subprocess.run(
                command,
                cwd=source_dir,
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise ModuleBuildError(
                f"zig build of {MODULE_NAME} timed out after {BUILD_TIMEOUT_SECONDS:.0f}s"
            ) from exc
        except OSError as exc:
            raise ModuleBuildError(f"cannot run the zig compiler: {exc}") from exc
        if done.returncode != 0 or not out.is_file():
            raise ModuleBuildError(
                f"zig build of {MODULE_NAME} failed (exit {done.returncode}):\n"
                + (done.stderr.strip() or done.stdout.strip())
            )
        os.replace(out, destination)  # atomic: concurrent builders write identical bytes


def build_session_message_wasm(out_dir: Path | None = None, *, force: bool = False) -> Path:
    """Path to the built ``build_session_message`` module, building it on first use.

    ``out_dir`` overrides the cache directory (default: :func:`module_dir`); ``force`` rebuilds
    even if the cached file exists.
    """
    directory = out_dir if out_dir is not None else module_dir()
    path = directory / f"{MODULE_NAME}-{cache_key()[:32]}.wasm"
    if force or not path.is_file():
        compile_module(path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m integrations.modules.build",
        description=f"Build (or reuse) the {MODULE_NAME} guest module; print its path and sha256.",
    )
    parser.add_argument("--out-dir", type=Path, default=None, help="cache directory")
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    try:
        path = build_session_message_wasm(args.out_dir, force=args.force)
    except ModuleBuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - started
    print(f"{path}")
    print(f"sha256 {sha256_file(path)}")
    print(f"size {path.stat().st_size} bytes, zig {zig_version()}, {seconds:.2f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
