"""`python -m sdkit.batch`: the same as the sdkit-batch command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
