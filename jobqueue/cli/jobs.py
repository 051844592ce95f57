"""``jqctl job ...``: submit, read, list, follow, cancel and retry jobs.

Following a job (``job watch``, ``job submit --wait``) rides the server's Watch stream
rather than polling, and its exit code is the job's outcome: 0 when it succeeded, 1 when
it ended any other way (failed, dead-lettered, cancelled). That makes
``jqctl job submit --wait ... && next-step`` work as a script would hope. A watch has no
deadline of its own (a job may run for hours); the global ``--timeout`` bounds each
ordinary call only.

The job "ends" when the server closes the stream, or earlier on a state that cannot
change any more. FAILED is not such a state (the job may wait for its retry), so only
the server can say a failed job is done; a stream that closes on any other unfinished
state means the connection was lost, not that the job ended.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from collections.abc import Callable, Sequence

from jobqueue import errors
from jobqueue.api.v1 import jobs_pb2
from jobqueue.cli import arguments
from jobqueue.cli.command import Command, ExitCode, Invocation, Subcommands
from jobqueue.cli.output import (
    details,
    enum_label,
    format_age,
    format_span,
    format_time,
    table,
)
from jobqueue.cli.submission import (
    check_file_options,
    read_jobs_text,
    spec_from_options,
    specs_from_text,
)
from jobqueue.client import FINISHED_STATES

_COMMAND_WIDTH = 40  # characters of a command shown in a table before it is cut
_ENDED_STATES = FINISHED_STATES | {jobs_pb2.JOB_STATE_FAILED}


def register(commands: Subcommands, common: argparse.ArgumentParser) -> None:
    group = commands.add_parser("job", help="submit, inspect, follow, cancel and retry jobs")
    actions = group.add_subparsers(dest="action", metavar="ACTION", required=True)
    _register_submit(actions, common)
    _register_list(actions, common)
    for name, command, summary in (
        ("get", get_job, "show one job"),
        ("events", job_events, "show a job's history, oldest first"),
        ("watch", watch_job, "follow a job until it ends; exit 0 if it succeeded, else 1"),
        ("retry", retry_job, "run a failed, dead-lettered or cancelled job again"),
    ):
        _job_id_parser(actions, common, name, command, summary)
    cancel = _job_id_parser(actions, common, "cancel", cancel_job, "cancel an unfinished job")
    cancel.add_argument("--reason", default="", help="recorded in the job's history")


def _job_id_parser(
    actions: Subcommands,
    common: argparse.ArgumentParser,
    name: str,
    command: Command,
    summary: str,
) -> argparse.ArgumentParser:
    parser = actions.add_parser(name, parents=[common], help=summary, description=summary)
    parser.add_argument("job_id", metavar="ID")
    parser.set_defaults(run=command)
    return parser


def _register_submit(actions: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = actions.add_parser(
        "submit",
        parents=[common],
        help="submit a job (a command or a Python handler), or a file of jobs",
        usage="jqctl job submit --queue Q [options] (-- ARGV... | --handler MODULE:FUNCTION)"
        "\n       jqctl job submit --file JOBS.yaml [--queue DEFAULT_QUEUE]",
    )
    parser.add_argument("argv", nargs="*", metavar="ARGV", help="the command, after --")
    parser.add_argument("--queue", metavar="QUEUE", help="the queue to submit to")
    parser.add_argument(
        "--handler", metavar="MODULE:FUNCTION", help="a Python handler registered in the worker"
    )
    parser.add_argument(
        "--args",
        dest="handler_args",
        type=arguments.json_object,
        metavar="JSON",
        help="the handler's keyword arguments, a JSON object",
    )
    parser.add_argument(
        "--env",
        action="append",
        type=arguments.environment_variable,
        metavar="NAME=VALUE",
        help="added to the command's environment (repeatable)",
    )
    parser.add_argument(
        "--workdir", metavar="DIR", help="the command's working directory on the worker"
    )
    parser.add_argument(
        "--priority", type=arguments.bounded_int(-100, 100), metavar="N", help="-100..100"
    )
    parser.add_argument(
        "--max-attempts", type=arguments.bounded_int(1, 1000), metavar="N", help="1..1000"
    )
    parser.add_argument(
        "--timeout",
        dest="job_timeout_s",
        type=arguments.duration_s,
        metavar="DURATION",
        help="the job's execution timeout: 30s, 5m, 1h or seconds (not the call deadline)",
    )
    parser.add_argument(
        "--idempotency-key", metavar="KEY", help="a second submit with it returns the first job"
    )
    parser.add_argument(
        "--label",
        dest="labels",
        action="append",
        type=arguments.label,
        metavar="KEY=VALUE",
        help="a label to find the job by (repeatable)",
    )
    parser.add_argument(
        "--run-after",
        type=arguments.run_after,
        metavar="TIME",
        help="RFC 3339 time, or +10s from now",
    )
    parser.add_argument(
        "--wait", action="store_true", help="follow the job; exit 0 if it succeeded"
    )
    parser.add_argument(
        "-f", "--file", metavar="PATH", help="a YAML or JSON list of job specs; - for stdin"
    )
    parser.set_defaults(run=submit_job)


def _register_list(actions: Subcommands, common: argparse.ArgumentParser) -> None:
    parser = actions.add_parser("list", parents=[common], help="list jobs, newest first")
    parser.add_argument("--queue", default="", metavar="QUEUE", help="only this queue")
    parser.add_argument(
        "--state",
        dest="states",
        type=arguments.states,
        default=[],
        metavar="STATE[,STATE...]",
        help="only jobs in these states, e.g. pending,running",
    )
    parser.add_argument(
        "--label",
        dest="labels",
        action="append",
        type=arguments.label,
        metavar="KEY=VALUE",
        help="only jobs with this label (repeatable)",
    )
    parser.add_argument(
        "--limit",
        type=arguments.bounded_int(1, 1000),
        default=0,
        metavar="N",
        help="jobs per page, 1..1000 (the server defaults to 100)",
    )
    parser.add_argument("--page-token", default="", metavar="TOKEN", help="from a previous page")
    parser.add_argument("--all", action="store_true", help="follow every page to the end")
    parser.set_defaults(run=list_jobs)


# Commands ------------------------------------------------------------------------------


def submit_job(invocation: Invocation) -> int:
    args = invocation.args
    if args.file:
        return _submit_file(invocation)
    job = invocation.client.submit(spec_from_options(args))
    if not args.wait:
        _show_job(invocation, job)
        return ExitCode.OK

    invocation.output.note(f"job {job.id} submitted to queue {job.spec.queue}")
    final = follow(invocation, job.id, lambda update: invocation.output.note(progress_line(update)))
    _show_job(invocation, final)
    return outcome(final)


def _submit_file(invocation: Invocation) -> int:
    check_file_options(invocation.args)
    text = read_jobs_text(invocation.args.file, sys.stdin)
    specs = specs_from_text(text, invocation.args.queue)

    jobs = invocation.client.submit_batch(specs)
    invocation.output.show(jobs, lambda: jobs_table(jobs, invocation))
    return ExitCode.OK


def get_job(invocation: Invocation) -> int:
    _show_job(invocation, invocation.client.get(invocation.args.job_id))
    return ExitCode.OK


def list_jobs(invocation: Invocation) -> int:
    page = collect_pages(invocation)
    invocation.output.show(page, lambda: jobs_table(page.jobs, invocation))
    if page.next_page_token:
        invocation.output.note(f"more jobs: --page-token {page.next_page_token} (or --all)")
    return ExitCode.OK


def collect_pages(invocation: Invocation) -> jobs_pb2.ListJobsResponse:
    """One page, or with ``--all`` every page from ``--page-token`` on, as one response."""
    args = invocation.args
    collected = jobs_pb2.ListJobsResponse()
    token, seen_tokens = args.page_token, set()
    while True:
        page = invocation.client.list_jobs(
            args.queue, args.states, dict(args.labels or []), args.limit, token
        )
        collected.jobs.extend(page.jobs)
        token = page.next_page_token
        if not (args.all and token):
            break
        # A server that hands back a token it gave before would keep this loop going forever.
        if token in seen_tokens:
            raise errors.JobQueueError(f"the server repeated the page token {token!r}")
        seen_tokens.add(token)
    collected.next_page_token = token
    return collected


def cancel_job(invocation: Invocation) -> int:
    job = invocation.client.cancel(invocation.args.job_id, invocation.args.reason)
    invocation.output.show(job, lambda: jobs_table([job], invocation))
    return ExitCode.OK


def retry_job(invocation: Invocation) -> int:
    job = invocation.client.retry(invocation.args.job_id)
    invocation.output.show(job, lambda: jobs_table([job], invocation))
    return ExitCode.OK


def job_events(invocation: Invocation) -> int:
    events = invocation.client.events(invocation.args.job_id)
    invocation.output.show(events, lambda: events_table(events, invocation))
    return ExitCode.OK


def watch_job(invocation: Invocation) -> int:
    def show(job: jobs_pb2.Job) -> None:
        invocation.output.show_update(job, lambda: progress_line(job))

    return outcome(follow(invocation, invocation.args.job_id, show))


# Following a job -----------------------------------------------------------------------


def follow(
    invocation: Invocation, job_id: str, report: Callable[[jobs_pb2.Job], None]
) -> jobs_pb2.Job:
    """Report each change of the job's state or attempt until it ends; the last update."""
    last: jobs_pb2.Job | None = None
    for update in invocation.client.watch(job_id):
        if last is None or (update.state, update.attempt) != (last.state, last.attempt):
            report(update)
        last = update
        if update.state in FINISHED_STATES:
            break

    if last is None:
        raise errors.UnavailableError(f"the watch of job {job_id} ended before any update")
    if last.state not in _ENDED_STATES:
        raise errors.UnavailableError(
            f"the watch of job {job_id} ended while it was {_state(last.state)}"
        )
    return last


def outcome(job: jobs_pb2.Job) -> ExitCode:
    return ExitCode.OK if job.state == jobs_pb2.JOB_STATE_SUCCEEDED else ExitCode.FAILED


def progress_line(job: jobs_pb2.Job) -> str:
    """``job 42 running on worker w-1 (attempt 1 of 3)``; a failure adds its error."""
    line = f"job {job.id} {_state(job.state)}"
    if job.worker_id and job.state in (jobs_pb2.JOB_STATE_ASSIGNED, jobs_pb2.JOB_STATE_RUNNING):
        line += f" on worker {job.worker_id}"
    if job.attempt:
        line += f" (attempt {job.attempt} of {job.max_attempts or '?'})"
    if job.last_error and job.state in (
        jobs_pb2.JOB_STATE_FAILED,
        jobs_pb2.JOB_STATE_DEAD_LETTERED,
    ):
        line += f": {job.last_error}"
    return line


# Views -------------------------------------------------------------------------------


def _state(state: jobs_pb2.JobState.ValueType) -> str:
    return enum_label(jobs_pb2.JobState.Name(state), "JOB_STATE_")


def _show_job(invocation: Invocation, job: jobs_pb2.Job) -> None:
    invocation.output.show(job, lambda: job_details(job, invocation))


def what_runs(spec: jobs_pb2.JobSpec) -> str:
    """The command line, or ``handler module:function``."""
    if spec.WhichOneof("kind") == "python":
        return f"handler {spec.python.handler}"
    return shlex.join(spec.command.argv)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def jobs_table(jobs: Sequence[jobs_pb2.Job], invocation: Invocation) -> str:
    now = invocation.output.now()
    return table(
        ("ID", "QUEUE", "STATE", "ATTEMPT", "AGE", "WORKER", "COMMAND"),
        (
            (
                job.id,
                job.spec.queue,
                _state(job.state),
                f"{job.attempt}/{job.max_attempts or '?'}",
                format_age(job.created_at, now),
                job.worker_id or "-",
                _cut(what_runs(job.spec), _COMMAND_WIDTH),
            )
            for job in jobs
        ),
    )


def job_details(job: jobs_pb2.Job, invocation: Invocation) -> str:
    now, spec = invocation.output.now(), job.spec
    fields: list[tuple[str, object]] = [
        ("ID", job.id),
        ("Queue", spec.queue),
        ("State", _state(job.state)),
        ("Attempt", f"{job.attempt} of {job.max_attempts or '?'}"),
        ("Runs", what_runs(spec)),
        *_kind_details(spec),
        ("Priority", spec.priority),
        ("Timeout", format_span(job.timeout)),
        ("Labels", ", ".join(f"{k}={v}" for k, v in sorted(spec.labels.items())) or "-"),
        ("Created", format_time(job.created_at, now)),
        ("Run after", format_time(spec.run_after, now)),
        ("Started", format_time(job.started_at, now)),
        ("Finished", format_time(job.finished_at, now)),
        ("Worker", job.worker_id or "-"),
    ]
    return details(fields + _result_details(job))


def _kind_details(spec: jobs_pb2.JobSpec) -> list[tuple[str, object]]:
    if spec.WhichOneof("kind") == "python":
        return [("Arguments", spec.python.arguments_json or "{}")]
    command = spec.command
    found: list[tuple[str, object]] = []
    if command.env:
        found.append(("Environment", " ".join(f"{k}={v}" for k, v in sorted(command.env.items()))))
    if command.working_directory:
        found.append(("Directory", command.working_directory))
    return found


def _result_details(job: jobs_pb2.Job) -> list[tuple[str, object]]:
    found: list[tuple[str, object]] = []
    if job.spec.idempotency_key:
        found.append(("Idempotency key", job.spec.idempotency_key))
    if job.state in _ENDED_STATES and job.spec.WhichOneof("kind") == "command":
        found.append(("Exit code", job.exit_code))
    if job.last_error:
        found.append(("Last error", job.last_error))
    if job.output:
        found.append(("Output", job.output + ("\n[truncated]" if job.output_truncated else "")))
    return found


def _event_details(data_json: str) -> str:
    try:
        data = json.loads(data_json) if data_json else {}
    except ValueError:
        return data_json
    if not isinstance(data, dict):
        return data_json
    return " ".join(f"{key}={value}" for key, value in data.items())


def events_table(events: Sequence[jobs_pb2.JobEvent], invocation: Invocation) -> str:
    now = invocation.output.now()
    return table(
        ("TIME", "EVENT", "ATTEMPT", "DETAILS"),
        (
            (
                format_time(event.occurred_at, now),
                enum_label(jobs_pb2.JobEventKind.Name(event.kind), "JOB_EVENT_KIND_"),
                event.attempt,
                _event_details(event.data_json),
            )
            for event in events
        ),
    )
