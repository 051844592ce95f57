"""``jqctl queue ...``: list queues, read one queue's statistics, pause and resume dispatch.

A queue's policy lives in its JobQueue resource and is changed with ``kubectl``; here
are only the operations a person on call needs in the moment. Pausing stops dispatch,
not submission: jobs still queue up and run once the queue is resumed.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence

from jobqueue.api.v1 import admin_pb2
from jobqueue.cli.command import ExitCode, Invocation, Subcommands
from jobqueue.cli.output import details, format_span, table


def register(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("queue", help="list queues, show statistics, pause and resume")
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", parents=[common], help="list queues with their counts")
    listing.set_defaults(run=list_queues)
    for name, command, summary in (
        ("stats", queue_stats, "show a queue's counts, ages and run times"),
        ("pause", pause_queue, "stop dispatching from a queue (submits are still accepted)"),
        ("resume", resume_queue, "dispatch from a paused queue again"),
    ):
        parser = actions.add_parser(name, parents=[common], help=summary, description=summary)
        parser.add_argument("queue", metavar="QUEUE")
        parser.set_defaults(run=command)


def list_queues(invocation: Invocation) -> int:
    queues = invocation.client.queues()
    invocation.output.show(queues, lambda: queues_table(queues))
    return ExitCode.OK


def queue_stats(invocation: Invocation) -> int:
    stats = invocation.client.queue_stats(invocation.args.queue)
    invocation.output.show(stats, lambda: stats_details(stats))
    return ExitCode.OK


def pause_queue(invocation: Invocation) -> int:
    return _change(invocation, invocation.client.pause)


def resume_queue(invocation: Invocation) -> int:
    return _change(invocation, invocation.client.resume)


def _change(invocation: Invocation, operation: Callable[[str], admin_pb2.Queue]) -> int:
    queue = operation(invocation.args.queue)
    invocation.output.show(queue, lambda: queues_table([queue]))
    return ExitCode.OK


def queues_table(queues: Sequence[admin_pb2.Queue]) -> str:
    return table(
        (
            "NAME",
            "NAMESPACE",
            "PAUSED",
            "PENDING",
            "RUNNING",
            "FAILED",
            "DEAD",
            "OLDEST",
            "WORKERS",
        ),
        (
            (
                queue.name,
                queue.namespace or "-",
                "yes" if queue.paused else "no",
                queue.stats.pending,
                queue.stats.assigned + queue.stats.running,
                queue.stats.failed,
                queue.stats.dead_lettered,
                format_span(queue.stats.oldest_pending_age),
                queue.stats.connected_workers,
            )
            for queue in queues
        ),
    )


def stats_details(stats: admin_pb2.QueueStats) -> str:
    return details(
        [
            ("Queue", stats.queue),
            ("Pending", stats.pending),
            ("Assigned", stats.assigned),
            ("Running", stats.running),
            ("Succeeded", stats.succeeded),
            ("Failed", stats.failed),
            ("Dead-lettered", stats.dead_lettered),
            ("Cancelled", stats.cancelled),
            ("Oldest pending", format_span(stats.oldest_pending_age)),
            ("Mean run time", format_span(stats.mean_run_time)),
            ("p95 run time", format_span(stats.p95_run_time)),
            ("Error rate", f"{stats.error_rate:.1%}"),
            ("Window", format_span(stats.window)),
            ("Workers", stats.connected_workers),
        ]
    )
