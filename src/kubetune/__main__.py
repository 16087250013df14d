from kubetune.cli import main

raise SystemExit(main())
