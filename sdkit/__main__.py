"""`python -m sdkit`: the same as the sdkit-gen command."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
