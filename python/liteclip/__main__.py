"""`python -m liteclip ...`: the same command line as the `liteclip` console script."""

import sys

from .cli import main

sys.exit(main())
