"""``python -m sealfleet.sandbox ARGS`` is ``sealfleet sandbox ARGS``."""

import sys

from sealfleet.app.cli.main import main

if __name__ == "__main__":
    sys.exit(main(["sandbox", *sys.argv[1:]]))
