"""`python -m retinopathy` is the same as the `retinopathy` console script."""

import sys

from retinopathy.cli import main

if __name__ == "__main__":  # not when a spawned process imports it
    sys.exit(main())
