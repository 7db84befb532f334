from tokenctl.cli.main import main

raise SystemExit(main())
