"""``python -m flowvi``: the same as the ``flowvi`` command."""

import sys

from flowvi.cli import main

if __name__ == "__main__":
    sys.exit(main())
