"""Rendering results as tables for people and as JSON or YAML for scripts."""

from __future__ import annotations

import datetime
import io
import json

import pytest
import yaml

from jobqueue.api.v1 import admin_pb2, jobs_pb2
from jobqueue.cli.output import Output, details, format_duration, format_time, table

NOW = datetime.datetime(2026, 11, 1, 9, 0, 0, tzinfo=datetime.UTC)


def _output(output_format: str) -> tuple[Output, io.StringIO]:
    stdout = io.StringIO()
    return Output(output_format, stdout=stdout, stderr=io.StringIO(), now=lambda: NOW), stdout


def _job() -> jobs_pb2.Job:
    job = jobs_pb2.Job(
        id="job-1",
        spec=jobs_pb2.JobSpec(queue="emails", command=jobs_pb2.CommandJob(argv=["true"])),
        state=jobs_pb2.JOB_STATE_SUCCEEDED,
        attempt=1,
        max_attempts=3,
    )
    job.created_at.FromDatetime(NOW - datetime.timedelta(minutes=3, seconds=12))
    return job


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (0.25, "250ms"), (45, "45s"), (192, "3m12s"), (3600, "1h"), (7505, "2h5m"),
     (356400, "4d3h"), (86400 + 30, "1d")],
)  # fmt: skip
def test_durations_read_in_their_two_largest_units(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


def test_times_show_when_and_how_long_ago() -> None:
    job = _job()

    assert format_time(job.created_at, NOW) == "2026-11-01T08:56:48Z (3m12s ago)"
    assert format_time(job.started_at, NOW) == "-"


def test_table_columns_are_aligned_without_trailing_blanks() -> None:
    rendered = table(("ID", "STATE"), [("a-long-id", "running"), ("b", "")])

    assert rendered.splitlines() == ["ID         STATE", "a-long-id  running", "b"]


def test_details_align_values_and_indent_multiline_ones() -> None:
    rendered = details([("ID", "job-1"), ("Output", "one\ntwo")])

    assert rendered.splitlines() == ["ID:      job-1", "Output:  one", "         two"]


def test_json_keeps_proto_field_names_defaults_and_numeric_counts() -> None:
    output, stdout = _output("json")

    output.show(_job(), lambda: "unused")
    output.show(admin_pb2.QueueStats(queue="emails", pending=12), lambda: "unused")

    decoder = json.JSONDecoder()
    text = stdout.getvalue()
    job, end = decoder.raw_decode(text)
    stats, _ = decoder.raw_decode(text, end + 1)
    assert (job["max_attempts"], job["spec"]["queue"]) == (3, "emails")
    assert job["state"] == "JOB_STATE_SUCCEEDED"
    assert job["exit_code"] == 0  # a default value is an answer, not a missing key
    assert job["created_at"] == "2026-11-01T08:56:48Z"
    assert stats["pending"] == 12  # int64, yet a number


def test_yaml_is_the_same_data_as_json() -> None:
    as_json, json_out = _output("json")
    as_yaml, yaml_out = _output("yaml")

    as_json.show([_job(), _job()], lambda: "unused")
    as_yaml.show([_job(), _job()], lambda: "unused")

    assert yaml.safe_load(yaml_out.getvalue()) == json.loads(json_out.getvalue())


def test_table_format_prints_the_view_not_the_data() -> None:
    output, stdout = _output("table")

    output.show(_job(), lambda: "the view\n")

    assert stdout.getvalue() == "the view\n"


def test_stream_updates_are_one_json_object_per_line() -> None:
    output, stdout = _output("json")

    output.show_update(_job(), lambda: "unused")
    output.show_update(_job(), lambda: "unused")

    assert [json.loads(line)["id"] for line in stdout.getvalue().splitlines()] == [
        "job-1",
        "job-1",
    ]
