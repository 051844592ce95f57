from __future__ import annotations

import io
import json
import logging

from jobqueue import logs


def _emit(json_lines: bool) -> str:
    stream = io.StringIO()
    logs.configure("INFO", stream=stream, json_lines=json_lines)
    logging.getLogger("jobqueue.test").info(
        "Job %s finished", "j-1", extra=logs.job_fields("j-1", "emails", attempt=2)
    )
    logging.getLogger("jobqueue.test").debug("not shown at INFO")
    return stream.getvalue()


def test_json_lines_carry_job_id_and_queue_as_fields() -> None:
    (line,) = _emit(json_lines=True).splitlines()

    record = json.loads(line)

    assert record["message"] == "Job j-1 finished"
    assert (record["job_id"], record["queue"], record["attempt"]) == ("j-1", "emails", 2)
    assert record["level"] == "INFO"
    assert record["logger"] == "jobqueue.test"


def test_terminal_lines_are_readable_with_fields_at_the_end() -> None:
    (line,) = _emit(json_lines=False).splitlines()

    assert "INFO" in line
    assert line.endswith("Job j-1 finished job_id=j-1 queue=emails attempt=2")


def test_kopf_records_name_their_resource_without_kopf_settings() -> None:
    record = logging.LogRecord(
        "kopf.objects", logging.INFO, "", 0, "Handler succeeded.", None, None
    )
    record.settings = object()
    record.k8s_skip = False
    record.k8s_ref = {"kind": "JobQueue", "namespace": "team-a", "name": "emails", "uid": "1"}

    document = json.loads(logs.JsonFormatter().format(record))

    assert document["object"] == "JobQueue team-a/emails"
    assert not {"settings", "k8s_skip", "k8s_ref"} & set(document)
