"""The adapters where side effects run (DESIGN.md §3): the wasm runtime and its host functions
(``runtime.py``, ``host.py``, ``invoke.py``, with the per-run bounds in ``limits.py`` and safe
reading of a module file in ``module_files.py``), the guest modules and their reproducible
build (``modules/``), the Cedar authorizer in front of every ``http_call`` (``authorizer.py``: the
compiled-policy cache and the decision, over ``domain.cedar``, Cedar's home, and the policy
book), the sandboxed runner and its host (``sandboxed.py``), the session service and its client
(``session_service.py``, ``session_client.py``), and the dispatcher that claims invocations
from the store, runs them and completes them through the guard (``dispatcher.py``).

May import ``domain`` and the libraries it adapts (wasmtime, httpx, anyio; cedarpy for type
annotations only, its calls live in ``domain/cedar.py``). ``tests/test_layers.py`` checks this.
"""
