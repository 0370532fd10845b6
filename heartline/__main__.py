from heartline.cli import main

raise SystemExit(main())
