"""``python -m bench``: see :mod:`bench`."""

import sys

from bench.runner import main

sys.exit(main())
