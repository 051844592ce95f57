from __future__ import annotations

import datetime
import json

import grpc
import pytest

from jobqueue import errors
from jobqueue.client import job_spec, translate_error


def test_command_job_spec_carries_argv_environment_and_policy() -> None:
    spec = job_spec(
        "emails",
        command=["echo", "hi"],
        env={"GREETING": "hi"},
        priority=5,
        timeout_s=2.5,
        labels={"team": "growth"},
        run_after=datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC),
    )

    assert spec.WhichOneof("kind") == "command"
    assert list(spec.command.argv) == ["echo", "hi"]
    assert dict(spec.command.env) == {"GREETING": "hi"}
    assert (spec.priority, spec.timeout.ToTimedelta()) == (5, datetime.timedelta(seconds=2.5))
    assert spec.run_after.ToDatetime(tzinfo=datetime.UTC).year == 2030
    assert dict(spec.labels) == {"team": "growth"}


def test_python_job_spec_carries_json_arguments() -> None:
    spec = job_spec("reports", handler="reports.tasks:build", arguments={"month": "2026-11"})

    assert spec.WhichOneof("kind") == "python"
    assert json.loads(spec.python.arguments_json) == {"month": "2026-11"}
    assert not spec.HasField("timeout")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "either a command or a Python handler"),
        ({"command": ["true"], "handler": "m:f"}, "either a command or a Python handler"),
        ({"handler": "m:f", "arguments": {"when": object()}}, "arguments are not JSON"),
    ],
)
def test_malformed_job_specs_are_refused_before_sending(
    kwargs: dict[str, object], message: str
) -> None:
    with pytest.raises(errors.InvalidInputError, match=message):
        job_spec("q", **kwargs)  # type: ignore[arg-type]


class _FailedCall(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        (grpc.StatusCode.NOT_FOUND, errors.NotFoundError),
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidInputError),
        (grpc.StatusCode.UNAVAILABLE, errors.UnavailableError),
        (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDeniedError),
        (grpc.StatusCode.INTERNAL, errors.JobQueueError),
    ],
)
def test_grpc_status_becomes_the_projects_error_with_the_servers_message(
    code: grpc.StatusCode, error_type: type[errors.JobQueueError]
) -> None:
    failure = _FailedCall(code, "job 42 does not exist")

    translated = translate_error(failure)

    assert type(translated) is error_type
    assert str(translated) == "job 42 does not exist"
    assert translated.__cause__ is failure
