from fusedgate.cli import main

raise SystemExit(main())
