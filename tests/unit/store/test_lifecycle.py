"""The state machine, backoff and validation, as pure functions (no database)."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from jobqueue.errors import ConflictError, InvalidInputError, LimitExceededError, NotFoundError
from jobqueue.store import (
    ALLOWED_TRANSITIONS,
    TERMINAL_STATES,
    AttemptResult,
    Backoff,
    EventKind,
    Job,
    JobKind,
    JobState,
    ManualClock,
    NewJob,
    Outcome,
    QueuePolicy,
    StoreLimits,
    backoff_delay_s,
    can_transition,
    lifecycle,
)

NOW = datetime(2030, 1, 1, tzinfo=UTC)
LIMITS = StoreLimits()
NO_JITTER = Backoff(initial_s=1, multiplier=2, max_s=300, jitter=0)


def job(**fields: Any) -> Job:
    values: dict[str, Any] = {
        "id": "0b6f0a4e-0000-4000-8000-000000000001",
        "queue": "default",
        "kind": JobKind.COMMAND,
        "payload": {"argv": ["true"], "env": {}, "working_directory": ""},
        "priority": 0,
        "state": JobState.RUNNING,
        "attempt": 1,
        "max_attempts": 3,
        "timeout_s": 60.0,
        "idempotency_key": None,
        "labels": {},
        "run_after": NOW,
        "created_at": NOW,
        "updated_at": NOW,
        "assigned_at": NOW,
        "started_at": NOW,
        "finished_at": None,
        "worker_id": "w1",
        "lease_expires_at": NOW + timedelta(seconds=30),
        "last_error": None,
        "output": None,
        "output_truncated": False,
        "exit_code": None,
    }
    values.update(fields)
    return Job(**values)


def judge(current: Job | None, result: AttemptResult, worker_id: str = "w1") -> Any:
    return lifecycle.judge_result(
        current,
        result,
        worker_id,
        backoff=NO_JITTER,
        limits=LIMITS,
        now=NOW + timedelta(seconds=5),
        random=lambda: 0.5,
    )


# Transitions ----------------------------------------------------------------------------


def test_terminal_states_allow_nothing_but_a_manual_retry() -> None:
    for state in TERMINAL_STATES:
        assert ALLOWED_TRANSITIONS[state] <= {JobState.PENDING}
    assert ALLOWED_TRANSITIONS[JobState.SUCCEEDED] == frozenset()


def test_every_state_has_a_transition_entry() -> None:
    assert set(ALLOWED_TRANSITIONS) == set(JobState)
    assert can_transition(JobState.PENDING, JobState.ASSIGNED)
    assert not can_transition(JobState.PENDING, JobState.RUNNING)
    assert not can_transition(JobState.FAILED, JobState.SUCCEEDED)


def test_check_transition_refuses_with_conflict() -> None:
    with pytest.raises(ConflictError, match="succeeded"):
        lifecycle.check_transition(job(state=JobState.SUCCEEDED), JobState.RUNNING)


# Backoff ------------------------------------------------------------------------------


@pytest.mark.parametrize(("attempt", "expected_s"), [(1, 1), (2, 2), (3, 4), (9, 256), (10, 300)])
def test_backoff_grows_exponentially_up_to_the_cap(attempt: int, expected_s: float) -> None:
    assert backoff_delay_s(NO_JITTER, attempt, lambda: 0.0) == expected_s


def test_backoff_jitter_spans_the_configured_band() -> None:
    backoff = Backoff(initial_s=10, multiplier=2, max_s=300, jitter=0.2)

    assert backoff_delay_s(backoff, 1, lambda: 0.0) == pytest.approx(8.0)
    assert backoff_delay_s(backoff, 1, lambda: 0.5) == pytest.approx(10.0)
    assert backoff_delay_s(backoff, 1, lambda: 0.999999) == pytest.approx(12.0, rel=1e-5)


def test_backoff_survives_huge_exponents() -> None:
    backoff = Backoff(initial_s=1, multiplier=1e10, max_s=60, jitter=0)
    assert backoff_delay_s(backoff, 100, lambda: 0.5) == 60


# Reports --------------------------------------------------------------------------------


def test_success_finishes_the_job_and_records_the_run_time() -> None:
    outcome, change = judge(job(), AttemptResult(job().id, 1, Outcome.SUCCEEDED, output="ok"))

    assert outcome.accepted
    assert change.job.state is JobState.SUCCEEDED
    assert change.job.output == "ok"
    assert change.job.lease_expires_at is None
    (event,) = change.events
    assert event.kind is EventKind.SUCCEEDED
    assert event.data["run_time_s"] == 5.0  # from started_at, when the worker gave none


def test_failure_with_attempts_left_schedules_a_retry() -> None:
    _, change = judge(job(attempt=2), AttemptResult(job().id, 2, Outcome.FAILED, error="bad"))

    assert change.job.state is JobState.FAILED
    assert change.job.run_after == NOW + timedelta(seconds=5 + 2)
    assert change.job.last_error == "bad"
    (event,) = change.events
    assert event.data["retry_at"] == change.job.run_after.isoformat()


def test_failure_of_the_last_attempt_dead_letters() -> None:
    _, change = judge(job(attempt=3), AttemptResult(job().id, 3, Outcome.TIMED_OUT))

    assert change.job.state is JobState.DEAD_LETTERED
    assert [event.kind for event in change.events] == [EventKind.FAILED, EventKind.DEAD_LETTERED]
    assert change.events[0].data["timed_out"] is True
    assert "timed out" in change.job.last_error


def test_result_for_an_assigned_job_starts_it_first() -> None:
    assigned = job(state=JobState.ASSIGNED, started_at=None)

    outcome, change = judge(assigned, AttemptResult(assigned.id, 1, Outcome.SUCCEEDED))

    assert outcome.accepted
    assert [event.kind for event in change.events] == [EventKind.STARTED, EventKind.SUCCEEDED]
    assert change.job.started_at is not None


@pytest.mark.parametrize(
    ("current", "attempt", "worker_id", "reason"),
    [
        (None, 1, "w1", "unknown job"),
        (job(), 2, "w1", "attempt 2"),
        (job(), 1, "w2", "belongs to worker w1"),
        (job(state=JobState.CANCELLED), 1, "w1", "cancelled"),
        (job(state=JobState.SUCCEEDED), 1, "w1", "succeeded"),
    ],
)
def test_stale_results_are_refused(
    current: Job | None, attempt: int, worker_id: str, reason: str
) -> None:
    result = AttemptResult(job().id, attempt, Outcome.SUCCEEDED)

    outcome, change = judge(current, result, worker_id)

    assert not outcome.accepted
    assert reason in outcome.reason
    assert change is None
    assert outcome.state == (current.state if current else None)


def test_started_is_only_accepted_for_an_assigned_attempt() -> None:
    assigned = job(state=JobState.ASSIGNED, started_at=None)
    accepted, change = lifecycle.judge_started(
        assigned, assigned.id, 1, worker_id="w1", lease_s=30, now=NOW
    )
    refused, nothing = lifecycle.judge_started(
        job(), assigned.id, 1, worker_id="w1", lease_s=30, now=NOW
    )

    assert accepted.accepted
    assert change is not None
    assert change.job.lease_expires_at == NOW + timedelta(seconds=30)
    assert not refused.accepted
    assert nothing is None


def test_lost_attempt_goes_back_to_pending_at_once() -> None:
    change = lifecycle.lose(job(), lifecycle.lease_expired_error("w1"), NOW, limits=LIMITS)

    assert change.job.state is JobState.PENDING
    assert change.job.run_after == NOW
    assert change.events[0].data["lease_expired"] is True


def test_output_and_error_are_truncated_to_their_limits() -> None:
    limits = StoreLimits(output_bytes=10, error_bytes=4)
    result = AttemptResult(job().id, 1, Outcome.FAILED, output="é" * 10, error="abcdefgh")

    _, change = lifecycle.judge_result(
        job(), result, "w1", backoff=NO_JITTER, limits=limits, now=NOW, random=lambda: 0.5
    )

    assert change.job.output == "é" * 5
    assert change.job.output_truncated
    assert change.job.last_error == "abcd"


def test_truncate_replaces_nul_characters() -> None:
    assert lifecycle.truncate_utf8("a\0b", 100) == ("a\ufffdb", False)


# Cancel and retry ------------------------------------------------------------------------


def test_cancel_names_the_worker_of_a_running_job_only() -> None:
    running = lifecycle.cancel(job(), "stop", NOW)
    failed = lifecycle.cancel(job(state=JobState.FAILED), "stop", NOW)

    assert running.job.state is JobState.CANCELLED
    assert running.events[0].data == {"reason": "stop", "worker_id": "w1"}
    assert failed.events[0].data["worker_id"] is None


def test_cancel_of_a_terminal_job_is_a_conflict() -> None:
    with pytest.raises(ConflictError):
        lifecycle.cancel(job(state=JobState.DEAD_LETTERED), "", NOW)


def test_retry_of_a_dead_letter_allows_one_more_run() -> None:
    dead = job(state=JobState.DEAD_LETTERED, attempt=3, finished_at=NOW)

    change = lifecycle.retry(dead, NOW)

    assert change.job.state is JobState.PENDING
    assert change.job.max_attempts == 4
    assert change.job.finished_at is None
    assert change.events[0].kind is EventKind.SUBMITTED


@pytest.mark.parametrize("state", [JobState.PENDING, JobState.RUNNING, JobState.SUCCEEDED])
def test_retry_of_other_states_is_a_conflict(state: JobState) -> None:
    with pytest.raises(ConflictError):
        lifecycle.retry(job(state=state), NOW)


# Validation -------------------------------------------------------------------------------

POLICY = QueuePolicy("default", payload_limit_bytes=200)


def new(**fields: Any) -> NewJob:
    values: dict[str, Any] = {
        "queue": "default",
        "kind": JobKind.COMMAND,
        "payload": {"argv": ["echo", "hi"]},
    }
    values.update(fields)
    return NewJob(**values)


def test_valid_job_takes_the_queue_defaults() -> None:
    prepared = lifecycle.validate_new_job(new(), POLICY, LIMITS, NOW)

    assert prepared.max_attempts == POLICY.max_attempts
    assert prepared.timeout_s == POLICY.timeout_s
    assert prepared.run_after == NOW
    assert prepared.payload == {"argv": ["echo", "hi"], "env": {}, "working_directory": ""}


def test_python_job_is_normalised() -> None:
    python = new(kind=JobKind.PYTHON, payload={"handler": "app.tasks:send_mail"})

    prepared = lifecycle.validate_new_job(python, POLICY, LIMITS, NOW)

    assert prepared.payload == {"handler": "app.tasks:send_mail", "arguments": {}}


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({"payload": {"argv": []}}, "argv"),
        ({"payload": {"argv": "ls -l"}}, "argv"),
        ({"payload": {"argv": [""]}}, "argv"),
        ({"payload": {"argv": ["ls"], "env": {"A": 1}}}, "env"),
        ({"payload": {"argv": ["ls"], "shell": True}}, "unknown field"),
        ({"kind": JobKind.PYTHON, "payload": {"handler": "no_colon"}}, "handler"),
        ({"kind": JobKind.PYTHON, "payload": {"handler": "a:b c"}}, "handler"),
        ({"kind": "shell"}, "kind"),
        ({"priority": 1001}, "priority"),
        ({"priority": True}, "priority"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"max_attempts": 101}, "max_attempts"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"timeout_s": 604801}, "timeout_s"),
        ({"idempotency_key": "k" * 256}, "idempotency_key"),
        ({"labels": {"": "x"}}, "labels"),
        ({"labels": {"k" * 64: "x"}}, "labels"),
        ({"labels": {"k": "v" * 256}}, "labels"),
        ({"run_after": datetime(2030, 1, 1)}, "run_after"),
        ({"payload": {"argv": ["a\0b"]}}, "NUL"),
        (
            {"kind": JobKind.PYTHON, "payload": {"handler": "a:b", "arguments": float("nan")}},
            "JSON",
        ),
    ],
)
def test_invalid_jobs_are_refused_naming_the_field(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        lifecycle.validate_new_job(new(**fields), POLICY, LIMITS, NOW)


def test_too_many_labels_is_a_limit() -> None:
    labels = {f"k{n}": "v" for n in range(33)}
    with pytest.raises(LimitExceededError, match="at most 32"):
        lifecycle.validate_new_job(new(labels=labels), POLICY, LIMITS, NOW)


def test_payload_over_the_queue_limit_names_the_limit() -> None:
    big = new(payload={"argv": ["echo", "x" * 300]})
    with pytest.raises(LimitExceededError, match="payload_limit_bytes"):
        lifecycle.validate_new_job(big, POLICY, LIMITS, NOW)


@pytest.mark.parametrize(
    "argv",
    [["echo", "a\0b"], ["echo", "\\\0"], ["\0"], ["echo", "é\0"]],
)
def test_a_nul_anywhere_in_the_payload_is_refused(argv: list[str]) -> None:
    with pytest.raises(InvalidInputError, match="payload: NUL characters are not allowed"):
        lifecycle.validate_new_job(new(payload={"argv": argv}), POLICY, LIMITS, NOW)


@pytest.mark.parametrize("text", ["\\u0000", "\\\\u0000", "u0000", "\\"])
def test_text_that_only_looks_like_an_escaped_nul_is_accepted(text: str) -> None:
    prepared = lifecycle.validate_new_job(
        new(payload={"argv": ["echo", text]}), POLICY, LIMITS, NOW
    )
    assert prepared.payload["argv"] == ["echo", text]


def test_kind_not_allowed_by_the_queue() -> None:
    commands_only = dataclasses.replace(POLICY, allowed_kinds=frozenset({JobKind.COMMAND}))
    python = new(kind=JobKind.PYTHON, payload={"handler": "a:b"})
    with pytest.raises(InvalidInputError, match="does not allow python"):
        lifecycle.validate_new_job(python, commands_only, LIMITS, NOW)


def test_batch_errors_name_the_job_and_unknown_queues() -> None:
    with pytest.raises(InvalidInputError, match=r"jobs\[1\]\.priority"):
        lifecycle.validate_batch([new(), new(priority=5000)], {"default": POLICY}, LIMITS, NOW)
    with pytest.raises(NotFoundError, match="unknown queue"):
        lifecycle.validate_batch([new(queue="nope")], {"default": POLICY}, LIMITS, NOW)
    with pytest.raises(LimitExceededError):
        lifecycle.validate_batch([new()] * 1001, {"default": POLICY}, LIMITS, NOW)


def test_empty_idempotency_key_means_none() -> None:
    prepared = lifecycle.validate_new_job(new(idempotency_key=""), POLICY, LIMITS, NOW)
    assert prepared.idempotency_key is None


def test_parse_arguments_json() -> None:
    assert lifecycle.parse_arguments_json("[1, 2]") == [1, 2]
    with pytest.raises(InvalidInputError, match="arguments: not valid JSON"):
        lifecycle.parse_arguments_json("{")
    with pytest.raises(InvalidInputError, match="arguments: not valid JSON"):
        lifecycle.parse_arguments_json("NaN")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"max_attempts": 0}, "max_attempts"),
        ({"backoff": Backoff(jitter=2)}, "jitter"),
        ({"backoff": Backoff(multiplier=0.5)}, "multiplier"),
        ({"concurrency_limit": 0}, "concurrency_limit"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"allowed_kinds": frozenset()}, "allowed_kinds"),
    ],
)
def test_invalid_queue_policies_are_refused(overrides: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        lifecycle.validate_queue_policy(QueuePolicy("q", **overrides), LIMITS)


# Clock --------------------------------------------------------------------------------


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(NOW)
    assert clock.now() == NOW
    clock.advance(1.5)
    assert clock.now() == NOW + timedelta(seconds=1.5)
    clock.set(NOW)
    assert clock.now() == NOW
    with pytest.raises(ValueError, match="tz-aware"):
        clock.set(datetime(2030, 1, 1))
