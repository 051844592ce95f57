"""``jqctl system status``: the health of each dependency as one operator replica sees it.

The exit code is for scripts and probes: 1 when any dependency is down, 0 otherwise. A
degraded dependency (Redis down, dispatch falls back to polling) still exits 0: the
system works, and the table says what is slower.
"""

from __future__ import annotations

import argparse

from jobqueue.api.v1 import admin_pb2
from jobqueue.cli.command import ExitCode, Invocation, Subcommands
from jobqueue.cli.output import details, enum_label, format_span, table


def register(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("system", help="the health of the operator and its dependencies")
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    status = actions.add_parser(
        "status", parents=[common], help="each dependency's health; exit 1 if any is down"
    )
    status.set_defaults(run=system_status)


def system_status(invocation: Invocation) -> int:
    status = invocation.client.system_status()
    invocation.output.show(status, lambda: status_view(status))
    down = [d.name for d in status.dependencies if d.health == admin_pb2.HEALTH_DOWN]
    if down or status.health == admin_pb2.HEALTH_DOWN:
        invocation.output.note(f"down: {', '.join(down) or 'the system'}")
        return ExitCode.FAILED
    return ExitCode.OK


def _health(health: admin_pb2.Health.ValueType) -> str:
    return enum_label(admin_pb2.Health.Name(health), "HEALTH_")


def status_view(status: admin_pb2.SystemStatusResponse) -> str:
    summary = details(
        [
            ("Health", _health(status.health)),
            ("Operator", status.operator_id or "-"),
            ("Version", status.version or "-"),
        ]
    )
    dependencies = table(
        ("DEPENDENCY", "HEALTH", "LATENCY", "MESSAGE"),
        (
            (d.name, _health(d.health), format_span(d.latency), d.message or "-")
            for d in status.dependencies
        ),
    )
    return f"{summary}\n\n{dependencies}"
