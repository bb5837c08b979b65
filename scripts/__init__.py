"""The composition root and the edges users touch: the ``sequent`` CLI and the incident demo.

May import ``bootstrap``, ``domain``, ``integrations`` and ``projections``; nothing imports
``scripts`` but its tests.
"""
