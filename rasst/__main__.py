"""``python -m rasst``: the ``rasst`` command."""

import sys

from rasst.cli import main

sys.exit(main())
