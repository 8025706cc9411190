import sys

from gateway.cli import main

raise SystemExit(main(sys.argv[1:]))
