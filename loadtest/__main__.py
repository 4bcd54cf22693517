"""`python -m loadtest`: the harness's command line."""

from __future__ import annotations

import sys

from loadtest.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    sys.exit(main())
