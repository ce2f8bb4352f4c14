"""``python -m build_engines.dali_backend``: see :mod:`build_engines.dali_backend.build`."""

import sys

from build_engines.dali_backend.build import main

sys.exit(main())
