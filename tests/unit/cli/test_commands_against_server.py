"""Every ``jqctl`` command, run in-process against a scripted gRPC server on loopback."""

from __future__ import annotations

import datetime
import io
import json
import socket
from pathlib import Path

import pytest
import yaml

from jobqueue.api.v1 import admin_pb2, jobs_pb2
from jobqueue.cli.main import main
from tests.unit.cli.scripted_server import SLOW_JOB_ID, ScriptedServer, sample_job

Captured = pytest.CaptureFixture[str]


def jqctl(server: ScriptedServer, *argv: str) -> int:
    # The scripted server speaks plaintext, as an operator in development may.
    return main(["--server", server.address, "--insecure-plaintext", *argv])


def _updates(
    job_id: str, *steps: tuple[jobs_pb2.JobState.ValueType, int, str]
) -> list[jobs_pb2.Job]:
    return [
        sample_job(job_id, state=state, attempt=attempt, worker_id="w-1", last_error=error)
        for state, attempt, error in steps
    ]


# Submitting ---------------------------------------------------------------------------


def test_submit_sends_argv_environment_labels_and_timeout(
    server: ScriptedServer, capsys: Captured
) -> None:
    code = jqctl(
        server,
        "job", "submit", "--queue", "emails",
        "--env", "REGION=eu", "--env", "MODE=fast",
        "--label", "team=growth", "--timeout", "5m", "--priority", "7",
        "--max-attempts", "4", "--idempotency-key", "digest-42", "--workdir", "/srv",
        "--run-after", "2030-01-01T09:00:00Z",
        "--", "send-digest", "-n", "--daily",
    )  # fmt: skip

    assert code == 0
    [request] = server.requests_of(jobs_pb2.SubmitRequest)
    spec = request.job
    assert list(spec.command.argv) == ["send-digest", "-n", "--daily"]
    assert dict(spec.command.env) == {"REGION": "eu", "MODE": "fast"}
    assert spec.command.working_directory == "/srv"
    assert dict(spec.labels) == {"team": "growth"}
    assert spec.timeout.ToTimedelta() == datetime.timedelta(minutes=5)
    assert (spec.priority, spec.max_attempts, spec.idempotency_key) == (7, 4, "digest-42")
    assert spec.run_after.ToDatetime(tzinfo=datetime.UTC) == datetime.datetime(
        2030, 1, 1, 9, tzinfo=datetime.UTC
    )
    assert "job-1" in capsys.readouterr().out


def test_submit_of_a_handler_sends_its_json_arguments(
    server: ScriptedServer, capsys: Captured
) -> None:
    code = jqctl(
        server, "-o", "json", "job", "submit", "--queue", "reports",
        "--handler", "reports.tasks:build", "--args", '{"month": "2026-11"}',
    )  # fmt: skip

    assert code == 0
    [request] = server.requests_of(jobs_pb2.SubmitRequest)
    assert request.job.python.handler == "reports.tasks:build"
    assert json.loads(request.job.python.arguments_json) == {"month": "2026-11"}
    printed = json.loads(capsys.readouterr().out)
    assert printed["spec"]["python"]["handler"] == "reports.tasks:build"


def test_submit_with_wait_prints_progress_and_exits_1_when_the_job_fails(
    server: ScriptedServer, capsys: Captured
) -> None:
    server.watch_updates["job-1"] = _updates(
        "job-1",
        (jobs_pb2.JOB_STATE_PENDING, 0, ""),
        (jobs_pb2.JOB_STATE_RUNNING, 1, ""),
        (jobs_pb2.JOB_STATE_RUNNING, 1, ""),  # a heartbeat-only update: no new line
        (jobs_pb2.JOB_STATE_FAILED, 1, "exit code 2: no such file"),
    )

    code = jqctl(server, "job", "submit", "--queue", "emails", "--wait", "--", "false")

    assert code == 1
    progress = capsys.readouterr().err.splitlines()
    assert progress == [
        "job job-1 submitted to queue emails",
        "job job-1 pending",
        "job job-1 running on worker w-1 (attempt 1 of 3)",
        "job job-1 failed (attempt 1 of 3): exit code 2: no such file",
    ]
    [watch] = server.requests_of(jobs_pb2.WatchJobRequest)
    assert watch.id == "job-1"


def test_submit_with_wait_exits_0_and_prints_the_final_job_when_it_succeeds(
    server: ScriptedServer, capsys: Captured
) -> None:
    server.watch_updates["job-1"] = _updates(
        "job-1", (jobs_pb2.JOB_STATE_RUNNING, 1, ""), (jobs_pb2.JOB_STATE_SUCCEEDED, 1, "")
    )

    code = jqctl(server, "-o", "json", "job", "submit", "--queue", "q", "--wait", "--", "true")

    assert code == 0
    assert json.loads(capsys.readouterr().out)["state"] == "JOB_STATE_SUCCEEDED"


def test_a_watch_that_closes_while_the_job_runs_is_a_lost_connection(
    server: ScriptedServer, capsys: Captured
) -> None:
    server.jobs["job-9"] = sample_job("job-9")
    server.watch_updates["job-9"] = _updates("job-9", (jobs_pb2.JOB_STATE_RUNNING, 1, ""))

    assert jqctl(server, "job", "watch", "job-9") == 5
    assert "ended while it was running" in capsys.readouterr().err


def test_submit_of_a_jobs_file_sends_one_batch_with_the_default_queue(
    server: ScriptedServer, tmp_path: Path, capsys: Captured
) -> None:
    jobs_file = tmp_path / "jobs.yaml"
    jobs_file.write_text(
        "- command: {argv: [echo, one]}\n"
        "  timeout: 30s\n"
        "  run_after: 2030-01-01T00:00:00Z\n"
        "- queue: reports\n"
        "  python: {handler: 'reports.tasks:build', arguments_json: '{}'}\n"
        "  labels: {team: growth}\n"
    )

    code = jqctl(server, "job", "submit", "--queue", "emails", "--file", str(jobs_file))

    assert code == 0
    [batch] = server.requests_of(jobs_pb2.SubmitBatchRequest)
    first, second = batch.jobs
    assert (first.queue, list(first.command.argv)) == ("emails", ["echo", "one"])
    assert first.timeout.seconds == 30
    assert first.run_after.ToDatetime().year == 2030
    assert (second.queue, second.python.handler) == ("reports", "reports.tasks:build")
    assert "job-1" in capsys.readouterr().out


def test_submit_reads_a_json_jobs_list_from_stdin(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = [{"queue": "emails", "command": {"argv": ["true"]}}] * 3
    monkeypatch.setattr("sys.stdin", io.StringIO(json.dumps(jobs)))

    assert jqctl(server, "job", "submit", "-f", "-") == 0
    [batch] = server.requests_of(jobs_pb2.SubmitBatchRequest)
    assert len(batch.jobs) == 3


def test_a_malformed_jobs_file_is_refused_before_anything_is_sent(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch, capsys: Captured
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO('[{"queue": "q", "argv": ["true"]}]'))

    assert jqctl(server, "job", "submit", "-f", "-") == 4
    assert server.requests == []
    assert 'job 1 in the file: Message type "jobqueue.v1.JobSpec" has no field named "argv"' in (
        capsys.readouterr().err
    )


# Reading and changing jobs -----------------------------------------------------------


def test_get_of_an_unknown_job_exits_3_with_the_servers_message(
    server: ScriptedServer, capsys: Captured
) -> None:
    assert jqctl(server, "job", "get", "nope") == 3
    captured = capsys.readouterr()
    assert captured.err == "jqctl: error: job nope does not exist\n"
    assert captured.out == ""


def test_get_shows_the_jobs_details(server: ScriptedServer, capsys: Captured) -> None:
    job = sample_job("job-7", state=jobs_pb2.JOB_STATE_FAILED, attempt=2, exit_code=2)
    job.last_error, job.output = "boom", "line one\nline two"
    server.jobs["job-7"] = job

    assert jqctl(server, "job", "get", "job-7") == 0
    *lines, last = capsys.readouterr().out.splitlines()
    fields = dict(line.split(":", 1) for line in lines)
    assert fields["State"].strip() == "failed"
    assert fields["Attempt"].strip() == "2 of 3"
    assert fields["Runs"].strip() == "echo job-7"
    assert (fields["Exit code"].strip(), fields["Last error"].strip()) == ("2", "boom")
    assert (fields["Output"].strip(), last.strip()) == ("line one", "line two")


def test_list_with_all_follows_every_page_token(server: ScriptedServer, capsys: Captured) -> None:
    server.pages = {
        "": jobs_pb2.ListJobsResponse(
            jobs=[sample_job("a"), sample_job("b")], next_page_token="p2"
        ),
        "p2": jobs_pb2.ListJobsResponse(jobs=[sample_job("c")], next_page_token="p3"),
        "p3": jobs_pb2.ListJobsResponse(jobs=[sample_job("d")]),
    }

    code = jqctl(
        server, "-o", "json", "job", "list", "--queue", "emails", "--state", "pending,running",
        "--label", "team=growth", "--limit", "2", "--all",
    )  # fmt: skip

    assert code == 0
    requests = server.requests_of(jobs_pb2.ListJobsRequest)
    assert [request.page_token for request in requests] == ["", "p2", "p3"]
    assert all(request.queue == "emails" and request.page_size == 2 for request in requests)
    assert list(requests[0].states) == [jobs_pb2.JOB_STATE_PENDING, jobs_pb2.JOB_STATE_RUNNING]
    assert dict(requests[0].labels) == {"team": "growth"}
    listing = json.loads(capsys.readouterr().out)
    assert [job["id"] for job in listing["jobs"]] == ["a", "b", "c", "d"]
    assert listing["next_page_token"] == ""


def test_list_without_all_shows_one_page_and_how_to_get_the_next(
    server: ScriptedServer, capsys: Captured
) -> None:
    server.pages = {
        "": jobs_pb2.ListJobsResponse(jobs=[sample_job("a")], next_page_token="p2"),
        "p2": jobs_pb2.ListJobsResponse(jobs=[sample_job("b")]),
    }

    assert jqctl(server, "job", "list", "--page-token", "p2") == 0
    captured = capsys.readouterr()
    assert [r.page_token for r in server.requests_of(jobs_pb2.ListJobsRequest)] == ["p2"]
    assert captured.out.splitlines()[0].split() == [
        "ID", "QUEUE", "STATE", "ATTEMPT", "AGE", "WORKER", "COMMAND",
    ]  # fmt: skip
    assert captured.out.splitlines()[1].split()[:3] == ["b", "emails", "pending"]
    assert "--page-token" not in captured.err

    assert jqctl(server, "job", "list") == 0
    assert "more jobs: --page-token p2" in capsys.readouterr().err


def test_cancel_sends_the_reason(server: ScriptedServer, capsys: Captured) -> None:
    server.jobs["job-3"] = sample_job("job-3")

    assert jqctl(server, "job", "cancel", "job-3", "--reason", "wrong input") == 0
    [request] = server.requests_of(jobs_pb2.CancelJobRequest)
    assert (request.id, request.reason) == ("job-3", "wrong input")
    assert "cancelled" in capsys.readouterr().out


def test_retry_refused_by_the_server_exits_4(server: ScriptedServer, capsys: Captured) -> None:
    server.jobs["job-4"] = sample_job("job-4", state=jobs_pb2.JOB_STATE_SUCCEEDED)

    assert jqctl(server, "job", "retry", "job-4") == 4
    assert capsys.readouterr().err == "jqctl: error: job job-4 already succeeded\n"


def test_events_show_the_jobs_history(server: ScriptedServer, capsys: Captured) -> None:
    server.jobs["job-5"] = sample_job("job-5")
    server.events["job-5"] = [
        jobs_pb2.JobEvent(id=1, kind=jobs_pb2.JOB_EVENT_KIND_SUBMITTED, attempt=0),
        jobs_pb2.JobEvent(
            id=2, kind=jobs_pb2.JOB_EVENT_KIND_FAILED, attempt=1, data_json='{"error": "boom"}'
        ),
    ]

    assert jqctl(server, "job", "events", "job-5") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["TIME", "EVENT", "ATTEMPT", "DETAILS"]
    assert lines[2].split() == ["-", "failed", "1", "error=boom"]

    assert jqctl(server, "-o", "yaml", "job", "events", "job-5") == 0
    events = yaml.safe_load(capsys.readouterr().out)
    assert [event["id"] for event in events] == [1, 2]


def test_watch_streams_each_change_as_a_json_line(server: ScriptedServer, capsys: Captured) -> None:
    server.jobs["job-6"] = sample_job("job-6")
    server.watch_updates["job-6"] = _updates(
        "job-6", (jobs_pb2.JOB_STATE_RUNNING, 1, ""), (jobs_pb2.JOB_STATE_SUCCEEDED, 1, "")
    )

    assert jqctl(server, "job", "watch", "job-6", "-o", "json") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line)["state"] for line in lines] == [
        "JOB_STATE_RUNNING",
        "JOB_STATE_SUCCEEDED",
    ]


# Queues, workers, system ---------------------------------------------------------------


def _queue(name: str) -> admin_pb2.Queue:
    queue = admin_pb2.Queue(name=name, namespace="default")
    queue.stats.CopyFrom(admin_pb2.QueueStats(queue=name, pending=12, running=3, failed=1))
    queue.stats.oldest_pending_age.FromSeconds(192)
    return queue


def test_queue_commands_list_show_pause_and_resume(
    server: ScriptedServer, capsys: Captured
) -> None:
    server.queues["emails"] = _queue("emails")

    assert jqctl(server, "queue", "list") == 0
    row = capsys.readouterr().out.splitlines()[1].split()
    assert row == ["emails", "default", "no", "12", "3", "1", "0", "3m12s", "0"]

    assert jqctl(server, "queue", "stats", "emails", "-o", "json") == 0
    assert json.loads(capsys.readouterr().out)["pending"] == 12

    assert jqctl(server, "queue", "pause", "emails") == 0
    assert capsys.readouterr().out.splitlines()[1].split()[2] == "yes"
    assert jqctl(server, "queue", "resume", "emails") == 0
    assert [r.queue for r in server.requests_of(admin_pb2.ResumeQueueRequest)] == ["emails"]
    assert not server.queues["emails"].paused


def test_stats_of_an_unknown_queue_exits_3(server: ScriptedServer, capsys: Captured) -> None:
    assert jqctl(server, "queue", "stats", "ghost") == 3
    assert "queue ghost does not exist" in capsys.readouterr().err


def test_worker_commands_list_drain_and_shut_down(server: ScriptedServer, capsys: Captured) -> None:
    for worker_id, queue in (("w-1", "emails"), ("w-2", "reports")):
        server.workers[worker_id] = admin_pb2.Worker(
            id=worker_id, queue=queue, state=admin_pb2.WORKER_STATE_ACTIVE, concurrency=4, busy=1
        )

    assert jqctl(server, "worker", "list", "--queue", "emails") == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == ["w-1"]
    assert lines[1].split()[3:5] == ["active", "1/4"]

    assert jqctl(server, "worker", "drain", "w-1") == 0
    assert "draining" in capsys.readouterr().out
    assert jqctl(server, "worker", "shutdown", "w-2", "--reason", "node upgrade") == 0
    [shutdown] = server.requests_of(admin_pb2.ShutdownWorkerRequest)
    assert (shutdown.worker_id, shutdown.reason) == ("w-2", "node upgrade")


@pytest.mark.parametrize(
    ("redis_health", "expected_code"),
    [(admin_pb2.HEALTH_DEGRADED, 0), (admin_pb2.HEALTH_DOWN, 1)],
)
def test_system_status_exits_1_only_when_a_dependency_is_down(
    server: ScriptedServer,
    capsys: Captured,
    redis_health: admin_pb2.Health.ValueType,
    expected_code: int,
) -> None:
    server.status.dependencies.add(name="postgres", health=admin_pb2.HEALTH_OK)
    server.status.dependencies.add(name="redis", health=redis_health, message="refused")

    assert jqctl(server, "system", "status") == expected_code
    captured = capsys.readouterr()
    assert [line.split()[0] for line in captured.out.splitlines()[-2:]] == ["postgres", "redis"]
    assert ("down: redis" in captured.err) == (expected_code == 1)


# Connection, credentials and failures ------------------------------------------------


def test_the_token_travels_as_bearer_metadata_on_every_call(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch, capsys: Captured
) -> None:
    server.required_token = "s3cret"
    server.jobs["job-1"] = sample_job("job-1")

    assert jqctl(server, "job", "get", "job-1") == 6
    assert "a valid bearer token is required" in capsys.readouterr().err

    assert jqctl(server, "job", "get", "job-1", "--token", "s3cret") == 0
    monkeypatch.setenv("JQ_TOKEN", "s3cret")
    server.watch_updates["job-1"] = _updates("job-1", (jobs_pb2.JOB_STATE_SUCCEEDED, 1, ""))
    assert jqctl(server, "job", "watch", "job-1") == 0
    assert server.metadata[-1]["authorization"] == "Bearer s3cret"


def test_the_server_comes_from_jq_server_when_not_given(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JQ_SERVER", server.address)

    assert main(["--insecure-plaintext", "queue", "list"]) == 0
    assert server.requests_of(admin_pb2.ListQueuesRequest)


def test_an_unreachable_server_exits_5(capsys: Captured) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed_port = probe.getsockname()[1]

    assert main(["--server", f"127.0.0.1:{closed_port}", "--insecure", "job", "get", "x"]) == 5
    assert capsys.readouterr().err.startswith("jqctl: error: ")


def test_a_call_past_its_deadline_exits_5(server: ScriptedServer, capsys: Captured) -> None:
    assert jqctl(server, "--timeout", "0.3", "job", "get", SLOW_JOB_ID) == 5
    assert "jqctl: error: " in capsys.readouterr().err
