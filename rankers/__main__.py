from rankers.cli import main

raise SystemExit(main())
