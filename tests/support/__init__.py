"""What several test modules share: the in-process CLI's result (``cli.py``), plain fakes
(``fakes.py``) and the suite's independent fold of the history with its workloads
(``oracle.py``). Test modules import from here, never from ``conftest`` or from each other;
fixtures live in ``conftest.py``.
"""
