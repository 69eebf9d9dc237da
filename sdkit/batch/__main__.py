"""python -m sdkit.batch: the same as sdkit-batch."""

from .cli import main

raise SystemExit(main())
