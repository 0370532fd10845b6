from loadtests.chaos.soak import main

raise SystemExit(main())
