"""The edges users touch, each starting at the composition root (``bootstrap``): ``cli/`` is the
``sequent`` command line, one module per command group (the race and the incident demo among
them); ``bench/`` is ``sequent bench``, the harness and one module per measurement of DESIGN.md
§7; ``demo`` and ``test`` are the shell entry points the README names (with ``_bootstrap.sh``,
which makes ``.venv`` for both), and ``incident.py`` keeps ``python -m scripts.incident``
running the demo. May import ``bootstrap``, ``console``, ``domain``, ``integrations``,
``projections`` and ``simulation`` (``sequent simulate``, and the race's baseline); nothing
imports ``scripts`` but its tests.
"""
