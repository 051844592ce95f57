"""Turning ``jqctl job submit``'s options, or a file of jobs, into ``JobSpec`` messages.

Both paths are pure: they read options or text and return specs, raising before anything
is sent. A wrong combination of options is a ``UsageError`` (exit 2, like argparse's
own); a file whose content is malformed is ``InvalidInputError`` (exit 4, like the
server refusing it), because the command line itself was fine.

A jobs file is a YAML (or JSON, which YAML reads too) list of specs in the proto JSON
mapping of ``JobSpec``, the same shape ``jqctl job get -o yaml`` prints under ``spec``:

    - queue: emails
      command: {argv: [send-digest, --daily], env: {REGION: eu}}
      timeout: 300s
      labels: {team: growth}
    - queue: reports
      python: {handler: "reports.tasks:build", arguments_json: '{"month": "2026-11"}'}
"""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Mapping
from typing import Any, TextIO

import yaml
from google.protobuf import json_format

from jobqueue import errors
from jobqueue.api.v1 import jobs_pb2
from jobqueue.cli.arguments import UsageError
from jobqueue.client import job_spec

# Options that describe one job on the command line; with --file the file describes them.
_JOB_OPTIONS = {
    "env": "--env",
    "workdir": "--workdir",
    "handler_args": "--args",
    "priority": "--priority",
    "max_attempts": "--max-attempts",
    "job_timeout_s": "--timeout",
    "idempotency_key": "--idempotency-key",
    "labels": "--label",
    "run_after": "--run-after",
}


def spec_from_options(args: argparse.Namespace) -> jobs_pb2.JobSpec:
    """The one job that ``job submit``'s options describe."""
    _check_job_kind(args)
    if not args.queue:
        raise UsageError("--queue is required")
    return job_spec(
        args.queue,
        command=args.argv or None,
        env=dict(args.env or []),
        working_directory=args.workdir or "",
        handler=args.handler,
        arguments=args.handler_args,
        priority=args.priority or 0,
        max_attempts=args.max_attempts or 0,
        timeout_s=args.job_timeout_s,
        idempotency_key=args.idempotency_key or "",
        labels=dict(args.labels or []),
        run_after=args.run_after,
    )


def _check_job_kind(args: argparse.Namespace) -> None:
    if bool(args.argv) == bool(args.handler):
        raise UsageError(
            "give the job to run: a command after -- or --handler module:function, "
            + ("not both" if args.argv else "none was given")
        )
    if args.handler and (args.env or args.workdir):
        raise UsageError("--env and --workdir apply to a command, not to --handler")
    if args.argv and args.handler_args is not None:
        raise UsageError("--args applies to --handler, not to a command")
    module, _, function = (args.handler or "m:f").partition(":")
    if not (module and function):
        raise UsageError(f"--handler is module:function, got {args.handler!r}")


def check_file_options(args: argparse.Namespace) -> None:
    """With ``--file`` the file describes the jobs; refuse options that would be ignored."""
    if args.argv or args.handler:
        raise UsageError("--file carries its own jobs; give no command or --handler with it")
    if args.wait:
        raise UsageError("--wait follows one job; it does not combine with --file")
    given = [flag for name, flag in _JOB_OPTIONS.items() if getattr(args, name) not in (None, [])]
    if given:
        raise UsageError(
            f"{', '.join(given)} cannot be combined with --file (only --queue, as a default)"
        )


def read_jobs_text(path: str, stdin: TextIO) -> str:
    """The text of ``--file``: a path, or ``-`` for stdin."""
    if path == "-":
        return stdin.read()
    try:
        with open(path, encoding="utf-8") as jobs_file:
            return jobs_file.read()
    except OSError as error:
        raise UsageError(f"cannot read {path}: {error.strerror or error}") from error


def specs_from_text(text: str, default_queue: str | None) -> list[jobs_pb2.JobSpec]:
    """The jobs a YAML or JSON list describes; jobs without a queue take ``default_queue``."""
    try:
        documents = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise errors.InvalidInputError(
            f"the jobs file is not valid YAML or JSON: {error}"
        ) from error
    if not isinstance(documents, list) or not documents:
        raise errors.InvalidInputError("the jobs file must hold a non-empty list of job specs")
    return [
        _spec_from_document(document, number, default_queue)
        for number, document in enumerate(documents, start=1)
    ]


def _spec_from_document(
    document: object, number: int, default_queue: str | None
) -> jobs_pb2.JobSpec:
    if not isinstance(document, Mapping):
        raise errors.InvalidInputError(f"job {number} in the file is not a mapping of fields")
    fields = {key: _as_json_value(value) for key, value in document.items()}
    if default_queue:
        fields.setdefault("queue", default_queue)
    try:
        spec = json_format.ParseDict(fields, jobs_pb2.JobSpec())
    except json_format.ParseError as error:
        raise errors.InvalidInputError(f"job {number} in the file: {error}") from error
    if not spec.queue:
        raise errors.InvalidInputError(f"job {number} in the file has no queue (or pass --queue)")
    if spec.WhichOneof("kind") is None:
        raise errors.InvalidInputError(f"job {number} in the file has neither command nor python")
    return spec


def _as_json_value(value: Any) -> Any:
    """YAML reads unquoted times as datetimes; the proto JSON mapping wants RFC 3339 text."""
    if isinstance(value, datetime.datetime):
        moment = value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
        return moment.isoformat().replace("+00:00", "Z")
    if isinstance(value, Mapping):
        return {key: _as_json_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_json_value(item) for item in value]
    return value
