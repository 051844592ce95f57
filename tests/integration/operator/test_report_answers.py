"""Answers to a worker's report batches on its command stream (``answer_on_commands``).

A worker that asks for it gets the answer with the next command it is sent, or alone
after the scheduler's ``answer_delay_s``; while its stream is not open, and when the
stream closes with answers still waiting, they come on the Report stream instead. The
worker here is driven by hand, against the real operator and store.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest

from jobqueue.api.v1 import jobs_pb2, workers_pb2
from jobqueue.client import job_spec
from tests.integration.operator.conftest import QUEUE, Operator, worker_by_hand
from tests.polling import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

SUCCEEDED = jobs_pb2.JOB_STATE_SUCCEEDED
WAIT_S = 10.0


def hold_answers(operator: Operator) -> None:
    """Answers wait for a command to ride on for longer than any test runs."""
    scheduler = operator.parts.scheduler
    scheduler.settings = dataclasses.replace(scheduler.settings, answer_delay_s=300.0)


def succeeded(job_id: str, attempt: int) -> workers_pb2.JobResult:
    return workers_pb2.JobResult(
        job=workers_pb2.JobAttempt(job_id=job_id, attempt=attempt),
        outcome=workers_pb2.OUTCOME_SUCCEEDED,
    )


def result_batch(batch_id: int, job_id: str, attempt: int) -> workers_pb2.ReportBatch:
    return workers_pb2.ReportBatch(
        id=batch_id,
        worker_id="hand",
        results=[succeeded(job_id, attempt)],
        reads_all_accepted=True,
        answer_on_commands=True,
    )


async def next_command(stream: Any) -> workers_pb2.WorkerCommand:
    command = await asyncio.wait_for(stream.read(), WAIT_S)
    assert isinstance(command, workers_pb2.WorkerCommand)
    return command


async def next_answer(call: Any) -> workers_pb2.ReportAnswer:
    answer = await asyncio.wait_for(call.read(), WAIT_S)
    assert isinstance(answer, workers_pb2.ReportAnswer)
    return answer


async def wait_until_succeeded(operator: Operator, job_id: str) -> None:
    async def done() -> bool:
        return (await operator.client.get(job_id)).state == SUCCEEDED

    await eventually(done, timeout_s=WAIT_S, what=f"job {job_id} succeeded")


async def test_an_answer_rides_on_the_next_assignment(operator: Operator) -> None:
    hold_answers(operator)
    async with worker_by_hand(operator, concurrency=2) as stub:
        stream = stub.Stream(workers_pb2.StreamRequest(worker_id="hand"))
        first = await operator.client.submit(job_spec(QUEUE, command=["true"]))
        (assigned,) = (await next_command(stream)).assignments.jobs
        report = stub.Report()
        await report.write(result_batch(1, first.id, assigned.attempt))
        await wait_until_succeeded(operator, first.id)

        second = await operator.client.submit(job_spec(QUEUE, command=["true"]))
        command = await next_command(stream)
        # Nothing came on the Report stream for batch 1: the next answer there is batch 2's.
        await report.write(workers_pb2.ReportBatch(id=2, worker_id="hand"))
        on_report_stream = await next_answer(report)
        report.cancel()
        stream.cancel()

    assert [job.job_id for job in command.assignments.jobs] == [second.id]
    assert [(a.id, a.all_accepted) for a in command.report_answers] == [(1, True)]
    assert on_report_stream.id == 2


async def test_an_answer_goes_alone_when_no_command_follows(operator: Operator) -> None:
    async with worker_by_hand(operator) as stub:
        stream = stub.Stream(workers_pb2.StreamRequest(worker_id="hand"))
        job = await operator.client.submit(job_spec(QUEUE, command=["true"]))
        (assigned,) = (await next_command(stream)).assignments.jobs
        report = stub.Report()
        await report.write(result_batch(7, job.id, assigned.attempt))
        command = await next_command(stream)
        report.cancel()
        stream.cancel()

    assert command.WhichOneof("command") is None
    assert [(a.id, a.all_accepted) for a in command.report_answers] == [(7, True)]
    assert (await operator.client.get(job.id)).state == SUCCEEDED


async def test_answers_come_on_the_report_stream_while_the_command_stream_is_not_open(
    operator: Operator,
) -> None:
    hold_answers(operator)
    async with worker_by_hand(operator) as stub:
        report = stub.Report()
        # No command stream yet: answered on the Report stream at once.
        await report.write(
            workers_pb2.ReportBatch(
                id=1, worker_id="hand", reads_all_accepted=True, answer_on_commands=True
            )
        )
        before_stream = await next_answer(report)

        stream = stub.Stream(workers_pb2.StreamRequest(worker_id="hand"))
        job = await operator.client.submit(job_spec(QUEUE, command=["true"]))
        (assigned,) = (await next_command(stream)).assignments.jobs
        await report.write(result_batch(2, job.id, assigned.attempt))
        session = operator.parts.scheduler.sessions["hand"]

        async def held() -> bool:
            return bool(session.answers)

        await eventually(held, timeout_s=WAIT_S, what="the answer waiting for a command")
        # The worker closes its command stream with the answer still waiting for it.
        stream.cancel()
        after_stream = await next_answer(report)
        report.cancel()

    assert (before_stream.id, before_stream.all_accepted) == (1, True)
    assert (after_stream.id, after_stream.all_accepted) == (2, True)
    assert (await operator.client.get(job.id)).state == SUCCEEDED
