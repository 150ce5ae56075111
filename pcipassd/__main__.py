from pcipassd.cli import main

raise SystemExit(main())
