from metis_rt.cli import main

raise SystemExit(main())
