from dpolab.cli import main

raise SystemExit(main())
