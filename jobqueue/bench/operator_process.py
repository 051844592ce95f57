"""The operator as the benchmark runs it: one child process, profiled on request.

``python -m jobqueue.bench.operator_process`` reads its settings from ``JQ_*`` variables
like the real operator and runs the same parts (``running_operator``: gRPC, the
scheduler, the outbox relay; no kopf, no cluster). It runs in a process of its own so the
benchmark's own client load does not share the operator's event loop and GIL.

Signals drive it: SIGUSR1 starts the sampling profiler (pyinstrument), SIGUSR2 stops it
and writes the session to ``--profile-output`` (renamed into place, so the file's
appearance means it is complete), SIGTERM stops the operator. Profiling only between the
two signals keeps start-up and idle time out of the profile.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from pyinstrument import Profiler

from jobqueue import logs, memory
from jobqueue.config import load_settings
from jobqueue.operator.app import running_operator

logger = logging.getLogger(__name__)

# Seconds between two samples: pyinstrument's default, fine enough for a run of seconds.
PROFILE_INTERVAL_S = 0.001


class _ProfileSwitch:
    """Starts and stops one profiler from signal handlers; writes each session it ends."""

    def __init__(self, output: Path) -> None:
        self.output = output
        self.profiler: Profiler | None = None

    def start(self) -> None:
        if self.profiler is None:
            # "disabled": sample whatever the event loop runs, not one task's awaits.
            self.profiler = Profiler(interval=PROFILE_INTERVAL_S, async_mode="disabled")
            self.profiler.start()

    def stop(self) -> None:
        if self.profiler is None:
            return
        session, self.profiler = self.profiler.stop(), None
        partial = self.output.with_name(self.output.name + ".partial")
        session.save(partial)
        os.replace(partial, self.output)


async def serve(profile_output: Path) -> None:
    settings = load_settings(None)
    switch = _ProfileSwitch(profile_output)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, switch.start)
    loop.add_signal_handler(signal.SIGUSR2, switch.stop)
    async with running_operator(settings, migrate=False, with_kopf=False):
        memory.freeze_startup()  # as jobqueue-operator does
        await stop.wait()
    switch.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jobqueue.bench.operator_process")
    parser.add_argument("--profile-output", type=Path, required=True)
    args = parser.parse_args(argv)
    logs.configure(os.environ.get("JQ_LOGGING_LEVEL", "INFO"), format="json")
    asyncio.run(serve(args.profile_output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
