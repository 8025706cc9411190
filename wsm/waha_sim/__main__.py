"""`python -m wsm.waha_sim` = `wsm waha-sim`."""

import sys

from wsm.waha_sim.cli import main

raise SystemExit(main(sys.argv[1:]))
