"""Parsers for the values typed on the command line: durations, labels, times, states.

Each is an argparse ``type=`` callable: a malformed value raises
``argparse.ArgumentTypeError`` with a message that says what was expected, so argparse
prints it next to the option's name and exits 2 before anything reaches the server.
Checks that span several options (a command or a handler, not both) cannot live here;
they raise ``UsageError`` from where the options are combined.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
from collections.abc import Callable
from typing import Any

from jobqueue.api.v1 import jobs_pb2


class UsageError(Exception):
    """The options given do not fit together; reported like an argparse error (exit 2)."""


_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}  # seconds per unit
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]*[A-Za-z0-9])?")

JOB_STATES: dict[str, jobs_pb2.JobState.ValueType] = {
    name.removeprefix("JOB_STATE_").lower(): value
    for name, value in jobs_pb2.JobState.items()
    if value != jobs_pb2.JOB_STATE_UNSPECIFIED
}


def duration_s(text: str) -> float:
    """``30s``, ``5m``, ``1h30m``, ``250ms`` or a bare number of seconds; above zero."""
    text = text.strip()
    if _NUMBER.fullmatch(text):
        seconds = float(text)
    elif text and "".join(m.group(0) for m in _DURATION_PART.finditer(text)) == text:
        seconds = sum(float(m[1]) * _UNIT_S[m[2]] for m in _DURATION_PART.finditer(text))
    else:
        raise argparse.ArgumentTypeError(
            f"expected a duration like 30s, 5m, 1h30m or a number of seconds, got {text!r}"
        )
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"a duration must be above zero, got {text!r}")
    return seconds


def positive_seconds(text: str) -> float:
    """A call deadline in seconds, above zero (the global ``--timeout``)."""
    try:
        seconds = float(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from error
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds above zero, got {text!r}")
    return seconds


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """A parser for an integer from ``low`` to ``high`` inclusive."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from error
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"expected {low} to {high}, got {value}")
        return value

    return parse


def _split_pair(text: str) -> tuple[str, str]:
    key, separator, value = text.partition("=")
    if not separator:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def label(text: str) -> tuple[str, str]:
    """``key=value``; the key is letters, digits and ``._/-``, as in Kubernetes labels."""
    key, value = _split_pair(text)
    if not _LABEL_KEY.fullmatch(key):
        raise argparse.ArgumentTypeError(
            f"a label key is letters, digits and ._/- (starting and ending alphanumeric), "
            f"got {key!r} in {text!r}"
        )
    return key, value


def environment_variable(text: str) -> tuple[str, str]:
    """``NAME=value`` with a name a shell would accept."""
    name, value = _split_pair(text)
    if not _ENV_NAME.fullmatch(name):
        raise argparse.ArgumentTypeError(
            f"an environment variable name is letters, digits and _, got {name!r} in {text!r}"
        )
    return name, value


def run_after(text: str) -> datetime.datetime:
    """An RFC 3339 time with its offset (``2030-01-01T09:00:00Z``) or ``+DURATION`` from now."""
    if text.startswith("+"):
        return datetime.datetime.now(datetime.UTC) + datetime.timedelta(
            seconds=duration_s(text[1:])
        )
    try:
        moment = datetime.datetime.fromisoformat(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(
            f"expected an RFC 3339 time like 2030-01-01T09:00:00Z or +10s, got {text!r}"
        ) from error
    if moment.tzinfo is None:
        # A time without an offset means different moments on different machines.
        raise argparse.ArgumentTypeError(f"the time needs an offset (Z or +02:00), got {text!r}")
    return moment


def states(text: str) -> list[jobs_pb2.JobState.ValueType]:
    """A comma-separated list of job states: ``pending,running``."""
    names = [name.strip().lower().replace("-", "_") for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in JOB_STATES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown job state {', '.join(unknown) or repr(text)}; "
            f"expected some of {', '.join(JOB_STATES)}"
        )
    return [JOB_STATES[name] for name in names]


def json_object(text: str) -> dict[str, Any]:
    """A JSON object, as a Python handler's keyword arguments."""
    try:
        value = json.loads(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not valid JSON: {error}") from error
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object, got {type(value).__name__}")
    return value
