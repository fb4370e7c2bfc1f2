"""Allow `python -m mlsim`."""

import sys

from mlsim.cli import main

sys.exit(main())
