"""What every ``jqctl`` command shares: its inputs, its exit codes and their meaning.

A command is a function from an ``Invocation`` (the parsed options, a connected client
and the output) to an exit code. Commands raise the project's errors and never print
them; ``exit_code_for`` turns an error into the code scripts rely on, in one place, so
two commands cannot disagree about what "not found" returns.
"""

from __future__ import annotations

import argparse
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeAlias

from jobqueue import errors
from jobqueue.cli.output import Output
from jobqueue.client import Client


class ExitCode(enum.IntEnum):
    OK = 0
    FAILED = 1
    USAGE = 2
    NOT_FOUND = 3
    REFUSED = 4
    UNAVAILABLE = 5
    UNAUTHORISED = 6


_EXIT_CODES: tuple[tuple[type[errors.JobQueueError], ExitCode], ...] = (
    (errors.NotFoundError, ExitCode.NOT_FOUND),
    (errors.InvalidInputError, ExitCode.REFUSED),
    (errors.ConflictError, ExitCode.REFUSED),
    (errors.UnavailableError, ExitCode.UNAVAILABLE),
    (errors.UnauthenticatedError, ExitCode.UNAUTHORISED),
    (errors.PermissionDeniedError, ExitCode.UNAUTHORISED),
)


def exit_code_for(error: errors.JobQueueError) -> ExitCode:
    """The exit code for a failed operation; anything unclassified is a plain failure."""
    for error_type, code in _EXIT_CODES:
        if isinstance(error, error_type):
            return code
    return ExitCode.FAILED


@dataclass(frozen=True)
class Invocation:
    args: argparse.Namespace
    client: Client
    output: Output


Command = Callable[[Invocation], int]

# Quoted: argparse's action class is generic only to type checkers, not at run time.
Subcommands: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"
