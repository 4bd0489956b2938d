from flowflexd.cli import main

raise SystemExit(main())
