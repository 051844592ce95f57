"""Parsing and validating ``jqctl``'s command line: nothing here reaches a server.

Client channels connect lazily, so a command refused at parse or validation time proves
it was refused before any call: the default server (localhost:7070) is never dialled.
"""

from __future__ import annotations

import argparse
import datetime

import pytest

from jobqueue.api.v1 import jobs_pb2
from jobqueue.cli import arguments
from jobqueue.cli.main import build_parser, main

Captured = pytest.CaptureFixture[str]


def _exit_code(argv: list[str]) -> int:
    """What the process would exit with: argparse raises SystemExit, commands return."""
    try:
        return main(argv)
    except SystemExit as exited:
        return int(exited.code or 0)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("250ms", 0.25), ("90", 90),
     ("1.5", 1.5), ("2d", 172800)],
)  # fmt: skip
def test_durations_take_units_or_bare_seconds(text: str, seconds: float) -> None:
    assert arguments.duration_s(text) == seconds


@pytest.mark.parametrize("text", ["", "abc", "5x", "-3", "0", "0s", "1h-", "m5", "5 m", "s"])
def test_malformed_durations_are_refused(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        arguments.duration_s(text)


def test_run_after_takes_a_time_with_offset_or_a_delay_from_now() -> None:
    assert arguments.run_after("2030-01-01T09:00:00Z") == datetime.datetime(
        2030, 1, 1, 9, tzinfo=datetime.UTC
    )
    before = datetime.datetime.now(datetime.UTC)
    delayed = arguments.run_after("+10m")
    assert datetime.timedelta(minutes=10) <= delayed - before < datetime.timedelta(minutes=11)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--timeout", "soon", "argument --timeout: expected a duration like 30s"),
        ("--timeout", "0s", "argument --timeout: a duration must be above zero"),
        ("--label", "team", "argument --label: expected KEY=VALUE, got 'team'"),
        ("--label", "=growth", "argument --label: a label key is letters"),
        ("--env", "1BAD=x", "argument --env: an environment variable name"),
        ("--run-after", "tomorrow", "argument --run-after: expected an RFC 3339 time"),
        ("--run-after", "2030-01-01T09:00:00", "the time needs an offset"),
        ("--args", "[1, 2]", "argument --args: expected a JSON object, got list"),
        ("--args", "{nope", "argument --args: not valid JSON"),
        ("--priority", "101", "argument --priority: expected -100 to 100, got 101"),
        ("--max-attempts", "x", "argument --max-attempts: expected an integer, got 'x'"),
    ],
)
def test_malformed_submit_options_exit_2_naming_the_option(
    option: str, value: str, message: str, capsys: Captured
) -> None:
    argv = ["job", "submit", "--queue", "q", option, value, "--", "true"]

    assert _exit_code(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give the job to run: a command after -- or --handler module:function"),
        (["--handler", "m:f", "--", "true"], "not both"),
        (["--handler", "m:f", "--env", "A=1"], "--env and --workdir apply to a command"),
        (["--args", "{}", "--", "true"], "--args applies to --handler"),
        (["--handler", "no_function"], "--handler is module:function"),
        (["--file", "jobs.yaml", "--", "true"], "--file carries its own jobs"),
        (["--file", "jobs.yaml", "--wait"], "--wait follows one job"),
        (["--file", "jobs.yaml", "--label", "a=b", "--priority", "3"], "--priority, --label"),
    ],
)
def test_contradictory_or_missing_job_options_exit_2_before_any_call(
    extra: list[str], message: str, capsys: Captured
) -> None:
    assert _exit_code(["job", "submit", "--queue", "q", *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jqctl: error: ")
    assert message in err
    assert "see: jqctl job submit --help" in err


def test_a_submit_without_a_queue_exits_2(capsys: Captured) -> None:
    assert _exit_code(["job", "submit", "--", "true"]) == 2
    assert "--queue is required" in capsys.readouterr().err


def test_an_unreadable_jobs_file_exits_2(capsys: Captured) -> None:
    assert _exit_code(["job", "submit", "--file", "/nonexistent/jobs.yaml"]) == 2
    assert "cannot read /nonexistent/jobs.yaml" in capsys.readouterr().err


def test_the_command_after_the_separator_keeps_its_own_options() -> None:
    args = build_parser().parse_args(
        ["job", "submit", "--queue", "q", "--", "grep", "--queue", "-n", "x"]
    )

    assert args.argv == ["grep", "--queue", "-n", "x"]
    assert args.queue == "q"


def test_connection_options_work_before_and_after_the_command() -> None:
    parser = build_parser()

    before = parser.parse_args(["-o", "json", "--server", "a:1", "job", "list"])
    after = parser.parse_args(["job", "list", "-o", "yaml", "--token", "t"])
    untouched = parser.parse_args(["--server", "a:1", "job", "list"])

    assert (before.output, before.server) == ("json", "a:1")
    assert (after.output, after.token, after.server) == ("yaml", "t", None)
    assert (untouched.output, untouched.server) == ("table", "a:1")


def test_the_global_timeout_is_the_call_deadline_and_submits_is_the_jobs() -> None:
    args = build_parser().parse_args(
        ["--timeout", "2.5", "job", "submit", "--queue", "q", "--timeout", "1h", "--", "true"]
    )

    assert (args.timeout_s, args.job_timeout_s) == (2.5, 3600)


@pytest.mark.parametrize("value", ["0", "-1", "ten", "nan"])
def test_a_bad_call_deadline_exits_2(value: str, capsys: Captured) -> None:
    assert _exit_code(["--timeout", value, "queue", "list"]) == 2
    assert "argument --timeout" in capsys.readouterr().err


def test_states_are_parsed_from_a_comma_list() -> None:
    args = build_parser().parse_args(["job", "list", "--state", "pending, Dead-Lettered"])

    assert args.states == [jobs_pb2.JOB_STATE_PENDING, jobs_pb2.JOB_STATE_DEAD_LETTERED]


def test_an_unknown_state_exits_2_listing_the_known_ones(capsys: Captured) -> None:
    assert _exit_code(["job", "list", "--state", "pending,done"]) == 2
    assert "unknown job state done; expected some of pending, assigned" in capsys.readouterr().err


def test_insecure_and_a_ca_file_contradict_each_other(capsys: Captured) -> None:
    assert _exit_code(["--insecure", "queue", "list", "--ca-file", "ca.pem"]) == 2
    assert "contradict" in capsys.readouterr().err


def test_a_missing_ca_file_exits_2(capsys: Captured) -> None:
    assert _exit_code(["--ca-file", "/nonexistent/ca.pem", "queue", "list"]) == 2
    assert "cannot read --ca-file /nonexistent/ca.pem" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["job"], ["queue", "stats"], ["worker", "drain"], ["nope"]])
def test_incomplete_commands_exit_2(argv: list[str]) -> None:
    assert _exit_code(argv) == 2
