from srcluster.cli import main

raise SystemExit(main())
