"""``python -m simclr_fast``: the same command line as ``simclr-fast``."""

from simclr_fast.cli import main

raise SystemExit(main())
