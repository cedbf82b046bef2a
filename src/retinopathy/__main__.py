"""`python -m retinopathy` is the same as the `retinopathy` console script."""

import sys

from retinopathy.cli import main

sys.exit(main())
