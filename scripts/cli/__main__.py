"""``python -m scripts.cli ARGS``: the ``sequent`` console script without installing it."""

import sys

from scripts.cli import main

sys.exit(main())
