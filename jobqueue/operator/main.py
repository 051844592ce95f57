"""Entry point of ``jobqueue-operator``.

The operator's parts (kopf handlers, gRPC API, scheduler, status mirroring) arrive with
later work; for now the command describes itself and refuses to pretend it runs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from jobqueue import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jobqueue-operator",
        description=(
            "Reconcile JobQueue and QueueWorkerPool resources, serve the jobqueue gRPC API "
            "and dispatch jobs to connected workers."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    print("\njobqueue-operator: the operator is not implemented yet.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
