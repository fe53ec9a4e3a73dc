from ece662.cli import main

raise SystemExit(main())
