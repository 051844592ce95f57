"""``python -m jobqueue.bench``: run the benchmark, print its table, write its JSON.

The defaults are the full run ``make bench`` does (a few minutes); every size can be
changed by a flag, and ``--tiny`` runs a few hundred jobs to check that it works.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from jobqueue import logs
from jobqueue.bench import report, stack
from jobqueue.bench.run import BenchConfig, Results, run_benchmark
from jobqueue.errors import JobQueueError

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m jobqueue.bench",
        description="Benchmark jobqueue end to end on local servers and report the numbers.",
    )
    defaults = BenchConfig()
    parser.add_argument("--output", type=Path, default=Path("bench-results.json"))
    parser.add_argument(
        "--profile-report",
        type=Path,
        default=Path("bench-profile.txt"),
        help="where the operator's call tree goes (default: bench-profile.txt)",
    )
    parser.add_argument("--tiny", action="store_true", help="a few hundred jobs, to check it works")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the processes' logs and print where"
    )
    for spec in dataclasses.fields(BenchConfig):
        flag = "--" + spec.name.replace("_", "-")
        default = getattr(defaults, spec.name)
        parser.add_argument(
            flag, type=type(default), dest=spec.name, help=f"see BenchConfig (default {default})"
        )
    return parser


def config_from(args: argparse.Namespace) -> BenchConfig:
    """The run's settings; ValueError names a flag whose value no run could honour."""
    base = BenchConfig.tiny() if args.tiny else BenchConfig()
    chosen = {
        spec.name: getattr(args, spec.name)
        for spec in dataclasses.fields(BenchConfig)
        if getattr(args, spec.name) is not None
    }
    return dataclasses.replace(base, **chosen)


async def _run(config: BenchConfig, run_dir: Path, profile_report: Path) -> Results:
    with stack.local_servers() as servers:
        return await run_benchmark(config, servers, run_dir, profile_report)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from(args)
    except ValueError as error:
        parser.error(str(error))  # exits 2, before any server starts
    logs.configure("WARNING", format="text")
    run_dir = Path(tempfile.mkdtemp(prefix="jobqueue-bench-"))
    succeeded = False
    try:
        results = asyncio.run(_run(config, run_dir, args.profile_report))
        succeeded = True
    except JobQueueError as error:
        print(f"benchmark failed: {error}", file=sys.stderr)
        print(f"the processes' logs are in {run_dir}", file=sys.stderr)
        return 1
    finally:
        if succeeded and not args.keep_logs:
            shutil.rmtree(run_dir, ignore_errors=True)
    print(report.table(results))
    report.write_json(results, args.output)
    print(f"\nresults: {args.output}")
    if args.keep_logs:
        print(f"logs: {run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
