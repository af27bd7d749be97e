"""``python -m tokenmetry.cli``: the ``tokenmetry`` command without its script."""

import sys

from . import main

sys.exit(main())
