"""The console's builder: the store, its read models, the follower that keeps them at the head,
and the ASGI app over them, wired from ``Settings`` like every other entry point."""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.applications import Starlette

from bootstrap.service import open_service
from bootstrap.settings import Settings
from console import Follower, console_app
from domain import CurationService
from projections import Projections


@dataclass
class Console:
    service: CurationService
    projections: Projections
    app: Starlette
    follower: Follower | None
    _closed: bool = field(default=False, repr=False)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.follower is not None:
            self.follower.stop()
        self.service.close()

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_console(settings: Settings | None = None, *, follow: bool = True) -> Console:
    """Opens the store and its read models, brings them to the head once (so the first page a
    person sees is current), and with ``follow`` keeps them there in a background thread."""
    service = open_service(settings or Settings.from_env())
    try:
        projections = Projections(service)
        projections.catch_up()
        follower = Follower(projections) if follow else None
        console = Console(service, projections, console_app(service, projections,
                          following=follow), follower)  # fmt: skip
    except BaseException:
        service.close()
        raise
    if follower is not None:
        follower.start()
    return console
