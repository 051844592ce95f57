"""Entry point of ``jqctl``: the parser, the connection, and what a failure exits with.

Commands live one group per module (``jobs``, ``queues``, ``workers``, ``system``); each
registers its parsers and returns an exit code. This module connects the client, runs
the command and turns the project's errors into exit codes and one line on stderr,
``jqctl: error: <message>``, never a traceback.

Exit codes are part of the interface scripts rely on:

    0  the operation succeeded; for ``job watch`` and ``job submit --wait``, the job did
    1  the operation failed, or the followed job failed, was dead-lettered or cancelled;
       ``system status``: a dependency is down
    2  the command line is wrong (argparse's own convention)
    3  not found: no such job, queue or worker
    4  refused: invalid input, or a conflict with the current state (retrying a job
       that succeeded)
    5  the server is unavailable or the deadline (``--timeout``) passed
    6  unauthenticated or permission denied

Connection options (``-o``, ``--server``, ``--token``, ``--ca-file``, ``--insecure``) are
accepted before the command or after it. ``--timeout`` is the deadline of each call in
seconds and goes before the command, because ``job submit --timeout`` is the job's own
execution timeout. A watch (``job watch``, ``--wait``) has no deadline.

TLS: until the operator serves TLS (a later issue), ``jqctl`` speaks plaintext unless
``--ca-file`` is given; TLS by default would make every command fail against today's
operator. ``--insecure`` asks for plaintext explicitly and will keep meaning that once
TLS is the default.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from jobqueue import __version__, errors
from jobqueue.cli import jobs, queues, system, workers
from jobqueue.cli.arguments import UsageError, positive_seconds
from jobqueue.cli.command import Command, ExitCode, Invocation, exit_code_for
from jobqueue.cli.output import FORMATS, Output
from jobqueue.client import Client

DEFAULT_SERVER = "localhost:7070"
DEFAULT_TIMEOUT_S = 10.0
_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for Ctrl-C

EPILOG = """\
exit codes:
  0  success (job watch, job submit --wait: the job succeeded)
  1  the operation failed, or the followed job failed, was dead-lettered or cancelled
  2  usage error: the command line is wrong
  3  not found: no such job, queue or worker
  4  refused: invalid input or a conflict with the job's or queue's state
  5  the server is unavailable or the deadline passed
  6  unauthenticated or permission denied

environment:
  JQ_SERVER  the server's HOST:PORT when --server is not given (else localhost:7070)
  JQ_TOKEN   the bearer token when --token is not given
"""


def _add_connection_options(parser: argparse.ArgumentParser, *, repeated: bool) -> None:
    """The options every command shares; where ``repeated``, only a given value is kept."""

    # Without SUPPRESS a command's unset default would overwrite a value given before it.
    def given(value: object) -> object:
        return argparse.SUPPRESS if repeated else value

    parser.add_argument(
        "-o", "--output", choices=FORMATS, default=given("table"), help="output format"
    )
    parser.add_argument(
        "--server", default=given(None), metavar="HOST:PORT", help="$JQ_SERVER or localhost:7070"
    )
    parser.add_argument("--token", default=given(None), help="bearer token (or $JQ_TOKEN)")
    parser.add_argument(
        "--ca-file", default=given(None), metavar="PATH", help="verify the server with TLS"
    )
    parser.add_argument(
        "--insecure", action="store_true", default=given(False), help="plaintext (today's default)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="jqctl",
        description="Submit, follow and manage jobqueue jobs, queues and workers.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_connection_options(parser, repeated=False)
    parser.add_argument(
        "--timeout",
        dest="timeout_s",
        type=positive_seconds,
        default=DEFAULT_TIMEOUT_S,
        metavar="SECONDS",
        help=f"deadline of each call (default {DEFAULT_TIMEOUT_S:g}); before the command",
    )

    # Repeated on every command so `jqctl job list -o json` works as well as `-o json` first.
    common = argparse.ArgumentParser(add_help=False)
    _add_connection_options(common, repeated=True)

    commands = parser.add_subparsers(dest="group", metavar="COMMAND")
    for group in (jobs, queues, workers, system):
        group.register(commands, common)
    commands.add_parser("version", help="print the jqctl version")
    return parser


def connect(args: argparse.Namespace) -> Client:
    """A client for the chosen server, plaintext unless ``--ca-file`` is given."""
    server = args.server or os.environ.get("JQ_SERVER") or DEFAULT_SERVER
    token = args.token or os.environ.get("JQ_TOKEN") or None
    if args.insecure and args.ca_file:
        raise UsageError("--insecure (plaintext) and --ca-file (TLS) contradict each other")
    ca_file = Path(args.ca_file) if args.ca_file else None
    try:
        return Client(
            server,
            plaintext=ca_file is None,
            ca_file=ca_file,
            timeout_s=args.timeout_s,
            token=token,
        )
    except OSError as error:
        raise UsageError(f"cannot read --ca-file {ca_file}: {error.strerror or error}") from error


def _run(args: argparse.Namespace) -> int:
    output = Output(args.output, stdout=sys.stdout, stderr=sys.stderr)
    command: Command = args.run
    with connect(args) as client:
        return command(Invocation(args=args, client=client, output=output))


def _fail(message: str) -> None:
    print(f"jqctl: error: {message}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.group == "version":
        print(f"jqctl {__version__}")
        return ExitCode.OK
    if args.group is None:
        parser.print_help()
        return ExitCode.USAGE

    try:
        return _run(args)
    except UsageError as error:
        _fail(f"{error} (see: jqctl {args.group} {args.action} --help)")
        return ExitCode.USAGE
    except errors.JobQueueError as error:
        _fail(str(error))
        return exit_code_for(error)
    except KeyboardInterrupt:
        _fail("interrupted")
        return _INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
