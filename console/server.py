"""Serving the console: a listening socket bound before anything is printed, and uvicorn on it.

The socket is bound here, not by uvicorn, so that ``--port 0`` gives a free port whose URL is
known (and printed) before the first request, and so that a port already taken is a one-line
error rather than a server log. uvicorn shuts down gracefully on SIGTERM and SIGINT (it
finishes the requests in flight, then returns).

On loopback the console answers only requests addressed to a loopback name: a web page in the
same person's browser cannot point a name of its own at 127.0.0.1 (DNS rebinding) and read
the jobs through it.
"""

from __future__ import annotations

import ipaddress
import socket

import uvicorn
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp

from domain import SequentError

GRACEFUL_SECONDS = 5
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")


class ServeFailed(SequentError):
    def __init__(self, host: str, port: int, why: str) -> None:
        super().__init__(f"cannot serve on {host}:{port}: {why}")


def is_loopback(host: str) -> bool:
    """Whether every address ``host`` names is on this machine only."""
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return False
    return all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback for info in infos)


class ConsoleServer:
    """An ASGI app on ``host:port`` (port 0: any free one); ``url`` is known once made."""

    def __init__(self, app: ASGIApp, host: str = "127.0.0.1", port: int = 8080) -> None:
        self.host = host
        self.socket = self._bind(host, port)
        if is_loopback(host):
            app = TrustedHostMiddleware(app, allowed_hosts=[*LOOPBACK_NAMES, host])
        self.app = app
        config = uvicorn.Config(
            app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=GRACEFUL_SECONDS,
        )
        self.server = uvicorn.Server(config)

    @staticmethod
    def _bind(host: str, port: int) -> socket.socket:
        try:
            family, kind, proto, _, address = socket.getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )[0]
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            raise ServeFailed(host, port, exc.strerror or str(exc)) from None
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)  # connections wait in the backlog until uvicorn accepts them
        except OSError as exc:
            sock.close()
            raise ServeFailed(host, port, exc.strerror or str(exc)) from None
        return sock

    @property
    def url(self) -> str:
        host, port = self.socket.getsockname()[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    def run(self) -> None:
        """Serves until SIGTERM or SIGINT (or ``stop``), then returns."""
        try:
            self.server.run(sockets=[self.socket])
        finally:
            self.socket.close()

    def stop(self) -> None:
        self.server.should_exit = True
