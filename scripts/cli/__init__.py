"""The ``sequent`` command line: one module per command group (commands.py lists them), the
argparse types (args.py), the composition root as commands meet it (root.py), and what the
terminal sees (output.py: the one-line error contract, JSON, rich).

``main`` is the console script (``sequent = "scripts.cli:main"``).
"""


def main(argv: list[str] | None = None) -> int:
    """Runs ``sequent ARGV`` and returns its exit status."""
    # Imported when called, not with the package: the benchmark imports the race
    # (scripts.cli.race), and loading every command group then would import the benchmark
    # back while it is still half loaded.
    from scripts.cli.commands import main as sequent  # noqa: PLC0415

    return sequent(argv)
