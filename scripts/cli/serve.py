"""``sequent serve [--host 127.0.0.1] [--port 8080] [--no-follow]``: the read-only web console
(console/), wired by ``bootstrap.open_console``.

Prints its URL once the socket listens (``--json``: ``{"url": ...}``), serves until SIGTERM or
SIGINT, then finishes the requests in flight, stops following the log, closes the store and
exits 0. Bound to loopback unless ``--host`` says otherwise; a non-loopback host is served
with a warning on stderr, since every page is readable by whoever reaches it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping

from bootstrap import open_console
from console import ConsoleServer, is_loopback
from scripts.cli.args import Args, Handler, Subcommands, add_command, port_number
from scripts.cli.output import EXIT_OK, OneLineParser
from scripts.cli.root import settings
from scripts.cli.signals import stop_on_signals


def run_serve(args: Args) -> int:
    with open_console(settings(args), follow=not args.no_follow) as console:
        server = ConsoleServer(console.app, args.host, args.port)
        if args.json:
            print(json.dumps({"url": server.url}), flush=True)
        else:
            print(f"sequent console: {server.url} (read-only; SIGTERM or Ctrl-C stops it)",
                  flush=True)  # fmt: skip
        if not is_loopback(args.host):
            print(f"sequent: warning: {args.host} is not loopback: anyone who reaches "
                  f"{server.url} can read every job", file=sys.stderr, flush=True)  # fmt: skip
        # Our handlers under uvicorn's: it restores the ones it found and re-raises the signal
        # it caught once it has shut down, which must end in this clean return, not in the
        # default handler's death.
        stop_on_signals()
        server.run()
    return EXIT_OK


HANDLERS: Mapping[str, Handler] = {"serve": run_serve}


def add_parsers(sub: Subcommands, common: OneLineParser) -> None:
    serve = add_command(
        sub,
        common,
        "serve",
        help="the read-only web console: jobs, audit timelines, discards, decisions, metrics",
        description="Serves / (jobs), /jobs/ID (the audit timeline, ?at=VERSION), /discarded, "
        "/decisions, /status and /metrics (Prometheus) until SIGTERM or Ctrl-C.",
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback)")
    serve.add_argument(
        "--port", type=port_number, default=8080, help="port to bind (0: any free one)"
    )
    serve.add_argument(
        "--no-follow",
        action="store_true",
        help="do not keep the read models at the head (a `sequent project` runner does)",
    )
