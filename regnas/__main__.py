"""`python -m regnas` runs the command line."""

import sys

from regnas.cli import main

if __name__ == "__main__":  # not when a spawned worker (isolated timing) imports this module as its main
    sys.exit(main())
