"""``jqctl worker ...``: see the connected workers, drain one, or shut one down.

Draining is the gentle stop: the worker takes nothing new and finishes what it runs
(what a pod does on SIGTERM). Shutdown asks it to stop now; its running jobs come back
through the queue's retry policy. Both return the worker as the server now sees it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from jobqueue.api.v1 import admin_pb2
from jobqueue.cli.command import ExitCode, Invocation, Subcommands
from jobqueue.cli.output import enum_label, format_age, table


def register(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("worker", help="list, drain and shut down workers")
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", parents=[common], help="list connected workers")
    listing.add_argument("--queue", default="", help="only workers of this queue")
    listing.set_defaults(run=list_workers)

    drain = actions.add_parser("drain", parents=[common], help="take nothing new, finish what runs")
    drain.add_argument("worker_id", metavar="WORKER_ID")
    drain.set_defaults(run=drain_worker)

    shutdown = actions.add_parser("shutdown", parents=[common], help="ask a worker to stop now")
    shutdown.add_argument("worker_id", metavar="WORKER_ID")
    shutdown.add_argument("--reason", default="", help="recorded with the shutdown")
    shutdown.set_defaults(run=shutdown_worker)


def list_workers(invocation: Invocation) -> int:
    workers = invocation.client.workers(invocation.args.queue)
    invocation.output.show(workers, lambda: workers_table(workers, invocation))
    return ExitCode.OK


def drain_worker(invocation: Invocation) -> int:
    worker = invocation.client.drain(invocation.args.worker_id)
    invocation.output.show(worker, lambda: workers_table([worker], invocation))
    return ExitCode.OK


def shutdown_worker(invocation: Invocation) -> int:
    worker = invocation.client.shutdown(invocation.args.worker_id, invocation.args.reason)
    invocation.output.show(worker, lambda: workers_table([worker], invocation))
    return ExitCode.OK


def workers_table(workers: Sequence[admin_pb2.Worker], invocation: Invocation) -> str:
    now = invocation.output.now()
    return table(
        ("ID", "QUEUE", "POOL", "STATE", "BUSY", "HOST", "HEARTBEAT", "AGE"),
        (
            (
                worker.id,
                worker.queue,
                worker.pool or "-",
                enum_label(admin_pb2.WorkerState.Name(worker.state), "WORKER_STATE_"),
                f"{worker.busy}/{worker.concurrency}",
                worker.hostname or "-",
                format_age(worker.last_heartbeat_at, now),
                format_age(worker.registered_at, now),
            )
            for worker in workers
        ),
    )
