"""``python -m switchboard_tokenbench``: the same as ``switchboard bench tokens``."""

from switchboard_tokenbench import main

raise SystemExit(main())
