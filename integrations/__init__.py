"""Adapters that run side effects: the wasm runtime, guest modules, the Cedar authorizer, the
session client and service, and the dispatcher (DESIGN.md §3).

May import ``domain``. Never imports ``projections`` or ``scripts``.
"""
