"""The ``lmc`` command line, installed with the package (``python -m lmc`` runs it too)."""

import sys

from . import _lmc


def main() -> None:
    sys.exit(_lmc.main(sys.argv))


if __name__ == "__main__":
    main()
