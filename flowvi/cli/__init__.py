"""The ``flowvi`` command line: `main` (parser and commands in `flowvi.cli.main`).

Model files are read by `flowvi.cli.model_file`; what is printed and drawn
after a fit is in `flowvi.cli.report`.
"""

from flowvi.cli.main import main

__all__ = ["main"]
