from wsm.cli import main

raise SystemExit(main())
