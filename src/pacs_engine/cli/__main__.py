"""`python -m pacs_engine.cli`: the `pacs-engine` command."""

import sys

from pacs_engine.cli import main

if __name__ == "__main__":
    sys.exit(main())
