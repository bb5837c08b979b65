"""What several test modules share: the in-process CLI's result and the ``sequent`` console
script (``cli.py``), plain fakes (``fakes.py``), the suite's independent fold of the history
with its workloads (``oracle.py``), changing a store by hand (``store_sql.py``), the console
served on a loopback port (``console.py``), headless Chromium (``browser.py``) and
OpenTelemetry's in-memory exporter (``tracing.py``). Test modules import from here, never from
``conftest`` or from each other; fixtures live in ``conftest.py``.
"""
