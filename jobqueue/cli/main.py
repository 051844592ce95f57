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

Connection options (``-o``, ``--server``, ``--token``, ``--ca-file``, ...) are accepted
before the command or after it. ``--timeout`` is the deadline of each call in seconds and
goes before the command, because ``job submit --timeout`` is the job's own execution
timeout. A watch (``job watch``, ``--wait``) has no deadline.

TLS always, verifying the operator with ``--ca-file`` (``$JQ_CA_FILE``) or the system's
roots; ``--tls-server-name`` when the certificate names another host than the one
dialled (a port-forward). Plaintext only with ``--insecure-plaintext`` (``--insecure``),
for an operator that serves plaintext in development.

Identity: the operator knows callers by their Kubernetes token. The first of these is
sent: ``--token``, ``--token-file``, ``$JQ_TOKEN``, ``$JQ_TOKEN_FILE``, else the token of
the kubeconfig's current context (``--kubeconfig``, ``--context``, ``$KUBECONFIG``), when
its user has one; a user with a client certificate has none to pass on.
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
from jobqueue.credentials import StaticToken, TokenFile, TokenSource, kubeconfig_token

DEFAULT_SERVER = "localhost:7070"
DEFAULT_KUBECONFIG = Path.home() / ".kube" / "config"
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
  JQ_SERVER      the server's HOST:PORT when --server is not given (else localhost:7070)
  JQ_CA_FILE     the CA bundle when --ca-file is not given (else the system's roots)
  JQ_TOKEN       the bearer token when neither --token nor --token-file is given
  JQ_TOKEN_FILE  a file holding the bearer token, after JQ_TOKEN
  KUBECONFIG     where the token comes from when none of the above is set
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
        "--token-file", default=given(None), metavar="PATH", help="file holding the token"
    )
    parser.add_argument(
        "--kubeconfig", default=given(None), metavar="PATH", help="take the token from here"
    )
    parser.add_argument("--context", default=given(None), help="kubeconfig context to use")
    parser.add_argument(
        "--ca-file",
        default=given(None),
        metavar="PATH",
        help="CA that verifies the server ($JQ_CA_FILE; else the system's roots)",
    )
    parser.add_argument(
        "--tls-server-name",
        default=given(None),
        metavar="NAME",
        help="name the server's certificate carries, if not the host dialled",
    )
    parser.add_argument(
        "--insecure-plaintext",
        "--insecure",
        dest="insecure",
        action="store_true",
        default=given(False),
        help="no TLS, for an operator serving plaintext in development",
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
    """A client for the chosen server: TLS unless ``--insecure-plaintext``, with a token."""
    server = args.server or os.environ.get("JQ_SERVER") or DEFAULT_SERVER
    if args.insecure and (args.ca_file or args.tls_server_name):
        raise UsageError(
            "--insecure-plaintext and --ca-file or --tls-server-name (TLS) contradict each other"
        )
    ca_name = None if args.insecure else args.ca_file or os.environ.get("JQ_CA_FILE")
    ca_file = Path(ca_name) if ca_name else None
    if ca_file is not None and not os.access(ca_file, os.R_OK):
        raise UsageError(f"cannot read --ca-file {ca_file}: no such file, or not readable")
    try:
        return Client(
            server,
            plaintext=args.insecure,
            ca_file=ca_file,
            server_name=args.tls_server_name,
            timeout_s=args.timeout_s,
            token=token_source(args),
        )
    except errors.ConfigError as error:
        raise UsageError(str(error)) from error


def token_source(args: argparse.Namespace) -> TokenSource | None:
    """The caller's token, from the first place that has one (see the module docstring)."""
    if args.token:
        return StaticToken(args.token)
    if args.token_file:
        return _token_file(Path(args.token_file), "--token-file")
    if os.environ.get("JQ_TOKEN"):
        return StaticToken(os.environ["JQ_TOKEN"])
    if os.environ.get("JQ_TOKEN_FILE"):
        return _token_file(Path(os.environ["JQ_TOKEN_FILE"]), "$JQ_TOKEN_FILE")
    kubeconfig = args.kubeconfig or os.environ.get("KUBECONFIG")
    if kubeconfig is None and not DEFAULT_KUBECONFIG.exists():
        return None
    try:
        token = kubeconfig_token(Path(kubeconfig) if kubeconfig else None, args.context)
    except errors.ConfigError as error:
        raise UsageError(str(error)) from error
    return StaticToken(token) if token else None


def _token_file(path: Path, option: str) -> TokenFile:
    source = TokenFile(path)
    try:
        source.check()
    except errors.ConfigError as error:
        raise UsageError(f"{option}: {error}") from error
    return source


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
