from flowflexd.commands.cli import main

raise SystemExit(main())
