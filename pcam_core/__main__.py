"""`python -m pcam_core ...` is the `pcam` command (and what torchrun runs with `-m pcam_core`)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
