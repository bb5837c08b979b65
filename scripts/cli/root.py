"""Where every command meets the composition root (bootstrap): ``--db`` becomes ``Settings``
here and nowhere else, and the service, the read models or the whole system are opened from
those settings, so a command runs the parts the worker, the race and the tests run, wired the
same way.

``store_command`` is the shape most commands share: open the service, make one call, close
the service, then print the result (``--json`` or rich).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bootstrap import Settings, open_service
from domain import CurationService
from projections import Projections
from scripts.cli.args import Args, Handler
from scripts.cli.output import Render, emit


def settings(args: Args, **overrides: object) -> Settings:
    """The settings of this command: the environment's, with ``--db`` and ``overrides``."""
    return Settings.from_env(store_url=args.db).with_(**overrides)


@contextmanager
def service(args: Args) -> Iterator[CurationService]:
    svc = open_service(settings(args))
    try:
        yield svc
    finally:
        svc.close()


@contextmanager
def read_models(args: Args, **options: Any) -> Iterator[Projections]:
    """The read models over the store ``--db`` names; ``options`` go to ``Projections``."""
    with service(args) as svc:
        yield Projections(svc, **options)


Run = Callable[[CurationService, Args], Any]


def store_command(run: Run, render: Render) -> Handler:
    """A handler that opens the store, makes one service call, always closes the store, then
    prints what the call returned."""

    def handler(args: Args) -> int:
        with service(args) as svc:
            payload = run(svc, args)
        return emit(args.json, payload, render)

    return handler
