"""``python -m simulations.audit run RUN_DIR``: the same as ``fedrec audit run RUN_DIR``."""

import sys

from simulations.audit.run import main

sys.exit(main())
