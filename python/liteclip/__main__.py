"""`python -m liteclip ...`: the same command line as the `liteclip` console script."""

import sys

from .cli import main

if __name__ == "__main__":  # not when a documentation tool imports every module
    sys.exit(main())
