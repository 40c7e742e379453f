from deba.cli import main

raise SystemExit(main())
