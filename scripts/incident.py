"""``python -m scripts.incident [--db URL] [--json]``: the incident demo under the module name it
had before the CLI became a package; the demo itself is ``sequent demo`` (scripts/cli/demo.py).
"""

import sys

from scripts.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
