"""The console for tests: in process (``request``: one request straight to the ASGI app, no
socket, so a ``memory://`` store works), or on a real socket for tests that talk to it as a
browser or Prometheus would (``serving(url)``: wired through ``bootstrap.open_console`` as
``sequent serve`` does, uvicorn in a thread on a free loopback port)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser

import anyio
import httpx
from starlette.types import ASGIApp

from bootstrap import Console, Settings, open_console
from console import ConsoleServer

START_SECONDS = 10.0


@dataclass(frozen=True)
class Served:
    console: Console
    url: str  # http://127.0.0.1:PORT/


@contextmanager
def serving(store_url: str, *, follow: bool = True) -> Iterator[Served]:
    with open_console(Settings.from_env(store_url=store_url), follow=follow) as console:
        server = ConsoleServer(console.app, "127.0.0.1", 0)
        thread = threading.Thread(target=server.run, name="console", daemon=True)
        thread.start()
        deadline = time.monotonic() + START_SECONDS
        while not server.server.started:
            assert thread.is_alive(), "the console stopped before it started"
            assert time.monotonic() < deadline, "the console did not start in time"
            time.sleep(0.02)
        try:
            yield Served(console, server.url)
        finally:
            server.stop()
            thread.join(timeout=START_SECONDS)


def request(app: ASGIApp, path: str, method: str = "GET") -> httpx.Response:
    """One request to ``app`` in process; a failing page is its error response, not raised."""

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
            return await client.request(method, path)

    return anyio.run(send)


VOID = frozenset({"br", "img", "input", "meta", "link", "hr", "wbr", "col", "source"})


class _TextOf(HTMLParser):
    """Collects the text inside the element whose id is ``wanted``."""

    def __init__(self, wanted: str) -> None:
        super().__init__(convert_charrefs=True)
        self.wanted = wanted
        self.depth = 0  # open elements inside the wanted one, itself included
        self.found = False
        self.parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in VOID:
            return
        if self.depth:
            self.depth += 1
        elif not self.found and dict(attrs).get("id") == self.wanted:
            self.found, self.depth = True, 1

    def handle_endtag(self, tag: str) -> None:
        if self.depth and tag not in VOID:
            self.depth -= 1

    def handle_data(self, data: str) -> None:
        if self.depth:
            self.parts.append(data)


def text_of(html: str, element_id: str) -> str:
    """The text of the element with ``element_id``, whitespace collapsed (as a person reads it:
    entities decoded, tags gone)."""
    parser = _TextOf(element_id)
    parser.feed(html)
    assert parser.found, f"no element #{element_id}"
    return " ".join(" ".join(parser.parts).split())
