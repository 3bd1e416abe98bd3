"""`python -m sealfleet` is the same as the `sealfleet` console script."""

import sys

from sealfleet.app.cli.main import main

sys.exit(main())
