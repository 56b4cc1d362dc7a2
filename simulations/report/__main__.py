"""``python -m simulations.report DIR``: the same as ``fedrec report DIR``."""

from simulations.report.main import main

raise SystemExit(main())
