"""Entry point of ``jobqueue-worker``.

The worker runtime arrives with later work; for now the command describes itself and
refuses to pretend it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jobqueue import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobqueue-worker",
        description="Connect to a jobqueue operator, run the jobs it pushes, report results.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    print("\njobqueue-worker: the worker is not implemented yet.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
