"""How a reporter reads the operator's answer to a batch: all accepted in one word, or
outcome by outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from jobqueue.api.v1 import workers_pb2
from jobqueue.worker.connection import Link, Session
from jobqueue.worker.reporting import Answer, Reporter

Reply = Callable[[list[workers_pb2.JobAttempt]], workers_pb2.ReportAnswer]


async def answers_to(job_ids: Sequence[str], reply: Reply) -> list[Answer]:
    """Report ``job_ids`` as started in one batch answered by ``reply``; the answers."""
    link = Link()
    link.establish(Session(1, "operator", heartbeat_interval_s=5, lease_s=30))

    async def send(items: list[workers_pb2.JobAttempt]) -> workers_pb2.ReportAnswer:
        return reply(items)

    reporter = Reporter(
        "Started", queue="q", link=link, send=send, key=lambda item: (item.job_id, item.attempt)
    )
    async with asyncio.timeout(5):
        running = asyncio.create_task(reporter.run(), name="reporter")
        try:
            waiting = [
                reporter.submit(workers_pb2.JobAttempt(job_id=job_id, attempt=1))
                for job_id in job_ids
            ]
            return list(await asyncio.gather(*waiting))
        finally:
            running.cancel()


def outcome(job_id: str, accepted: bool, reason: str = "") -> workers_pb2.ReportOutcome:
    job = workers_pb2.JobAttempt(job_id=job_id, attempt=1)
    return workers_pb2.ReportOutcome(job=job, accepted=accepted, reason=reason)


async def test_an_answer_that_accepts_all_accepts_every_item() -> None:
    answers = await answers_to(
        ["a", "b", "c"], lambda _: workers_pb2.ReportAnswer(id=1, all_accepted=True)
    )

    assert answers == [Answer(True)] * 3


async def test_outcomes_are_matched_to_the_attempts_they_name() -> None:
    def reply(_: list[workers_pb2.JobAttempt]) -> workers_pb2.ReportAnswer:
        return workers_pb2.ReportAnswer(
            id=1, outcomes=[outcome("b", False, "cancelled"), outcome("a", True)]
        )

    assert await answers_to(["a", "b"], reply) == [Answer(True), Answer(False, "cancelled")]


async def test_an_answer_that_says_nothing_of_an_item_refuses_it() -> None:
    answers = await answers_to(["a"], lambda _: workers_pb2.ReportAnswer(id=1))

    assert answers == [Answer(False, "the operator did not answer for this report")]
