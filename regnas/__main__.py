"""`python -m regnas` runs the command line."""

import sys

from regnas.cli import main

sys.exit(main())
