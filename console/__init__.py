"""The console (DESIGN.md §5 ``sequent serve``, §9): a read-only web application over one store.

``app.py`` builds the ASGI application (Starlette, server-rendered Jinja2 templates in
``templates/``, no JavaScript): the jobs (``/``), one job's audit timeline in lanes
(``/jobs/{id}``, ``?at=VERSION``; its lanes from ``lanes.py``), the discarded completions
(``/discarded``), the Cedar decisions (``/decisions``), the read models' lag (``/status``, from
``lag.py``) and ``/metrics`` (``metrics.py``: store-wide totals from the read models). What
each page shows is in ``pages.py``; ``follower.py`` keeps the read models at the head while it
runs; ``server.py`` serves it with uvicorn. ``bootstrap.open_console`` wires it to a store.

May import ``domain`` and ``projections`` (and the web libraries), never integrations,
scripts or bootstrap. ``tests/test_layers.py`` checks this.
"""

from console.app import console_app
from console.follower import Follower
from console.server import ConsoleServer, ServeFailed, is_loopback

__all__ = ["ConsoleServer", "Follower", "ServeFailed", "console_app", "is_loopback"]
