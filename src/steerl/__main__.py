"""``python -m steerl``: the same as the ``steerl`` command."""

from steerl.cli import main

if __name__ == "__main__":
    main()
