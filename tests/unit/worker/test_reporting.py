"""How a reporter sends its batches (a few calls at once) and reads the operator's
answers: all accepted in one word, or outcome by outcome."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence

import pytest

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


class HeldCalls:
    """A ``send`` whose calls wait until the test lets each one go, accepting everything."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.began = asyncio.Condition()
        self._release: list[asyncio.Event] = []

    async def send(self, items: list[workers_pb2.JobAttempt]) -> workers_pb2.ReportAnswer:
        released = asyncio.Event()
        self._release.append(released)
        async with self.began:
            self.batches.append([item.job_id for item in items])
            self.began.notify_all()
        await released.wait()
        return workers_pb2.ReportAnswer(all_accepted=True)

    async def wait_for_calls(self, count: int) -> None:
        async with self.began:
            await self.began.wait_for(lambda: len(self.batches) >= count)

    def release(self, call: int) -> None:
        self._release[call].set()


def started_reporter(send: HeldCalls) -> Reporter[workers_pb2.JobAttempt]:
    link = Link()
    link.establish(Session(1, "operator", heartbeat_interval_s=5, lease_s=30))
    return Reporter(
        "Started",
        queue="q",
        link=link,
        send=send.send,
        key=lambda item: (item.job_id, item.attempt),
        max_calls_in_flight=3,
    )


def attempt(job_id: str) -> workers_pb2.JobAttempt:
    return workers_pb2.JobAttempt(job_id=job_id, attempt=1)


async def test_reports_go_at_once_while_fewer_calls_than_the_limit_are_out() -> None:
    calls = HeldCalls()
    reporter = started_reporter(calls)
    async with asyncio.timeout(5), asyncio.TaskGroup() as group:
        running = group.create_task(reporter.run())
        first = reporter.submit(attempt("a"))
        await calls.wait_for_calls(1)
        # A report made while the first call is out does not wait for its answer.
        second = reporter.submit(attempt("b"))
        await calls.wait_for_calls(2)
        third = reporter.submit(attempt("c"))
        await calls.wait_for_calls(3)
        # With the limit reached, later reports wait, and then go together.
        later = [reporter.submit(attempt("d")), reporter.submit(attempt("e"))]
        for _ in range(5):
            await asyncio.sleep(0)
        assert calls.batches == [["a"], ["b"], ["c"]]
        assert sorted(reporter.unanswered()) == [(job, 1) for job in "abcde"]

        calls.release(0)
        assert await first == Answer(True)
        await calls.wait_for_calls(4)
        assert calls.batches[3] == ["d", "e"]
        for call in (1, 2, 3):
            calls.release(call)
        assert await asyncio.gather(second, third, *later) == [Answer(True)] * 4
        await reporter.flushed()
        running.cancel()


async def test_calls_cut_short_leave_their_reports_to_be_sent_again() -> None:
    calls = HeldCalls()
    reporter = started_reporter(calls)
    async with asyncio.timeout(5):
        running = asyncio.create_task(reporter.run())
        answers = [reporter.submit(attempt("a")), reporter.submit(attempt("b"))]
        await calls.wait_for_calls(1)
        answers.append(reporter.submit(attempt("c")))
        await calls.wait_for_calls(2)
        running.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await running
        # Nothing was answered, so nothing is lost: the next run sends all three.
        assert not any(answer.done() for answer in answers)
        assert sorted(reporter.unanswered()) == [("a", 1), ("b", 1), ("c", 1)]

        again = HeldCalls()
        reporter._send = again.send
        rerun = asyncio.create_task(reporter.run())
        await again.wait_for_calls(1)
        assert sorted(job for batch in again.batches for job in batch) == ["a", "b", "c"]
        rerun.cancel()


def lingering_reporter(
    send: HeldCalls, *, linger_s: float, may_linger: Callable[[], bool]
) -> Reporter[workers_pb2.JobAttempt]:
    link = Link()
    link.establish(Session(1, "operator", heartbeat_interval_s=5, lease_s=30))
    return Reporter(
        "Started",
        queue="q",
        link=link,
        send=send.send,
        key=lambda item: (item.job_id, item.attempt),
        linger_s=linger_s,
        may_linger=may_linger,
    )


async def report_answered(
    reporter: Reporter[workers_pb2.JobAttempt], calls: HeldCalls, job: str, call: int
) -> None:
    """Report ``job``, wait for it to go as call number ``call``, and answer it."""
    answer = reporter.submit(attempt(job))
    await calls.wait_for_calls(call + 1)
    calls.release(call)
    assert await answer == Answer(True)


async def test_reports_coming_often_linger_and_share_a_call() -> None:
    calls = HeldCalls()
    # Long enough that the test's own steps all fall inside it, however slow the machine.
    reporter = lingering_reporter(calls, linger_s=0.5, may_linger=lambda: True)
    async with asyncio.timeout(5):
        running = asyncio.create_task(reporter.run())
        # The first reports have too few before them to expect company: each goes at once.
        for call, job in enumerate("ab"):
            await report_answered(reporter, calls, job, call)

        # A third so soon after them lingers, and the next one shares its call.
        third = reporter.submit(attempt("c"))
        for _ in range(5):
            await asyncio.sleep(0)
        assert calls.batches == [["a"], ["b"]]  # lingering
        fourth = reporter.submit(attempt("d"))
        await calls.wait_for_calls(3)
        calls.release(2)

        assert await asyncio.gather(third, fourth) == [Answer(True)] * 2
        assert calls.batches == [["a"], ["b"], ["c", "d"]]
        running.cancel()


@pytest.mark.parametrize("may_linger", [True, False], ids=["lone", "may-not-linger"])
async def test_a_report_goes_at_once_when_alone_or_when_the_worker_may_not_linger(
    may_linger: bool,
) -> None:
    calls = HeldCalls()
    # A linger longer than the test's bound: a report held for it would time the test out.
    reporter = lingering_reporter(calls, linger_s=60, may_linger=lambda: may_linger)
    async with asyncio.timeout(5):
        running = asyncio.create_task(reporter.run())
        await report_answered(reporter, calls, "a", 0)

        assert calls.batches == [["a"]]
        running.cancel()


async def test_after_a_linger_nobody_joined_the_next_is_skipped() -> None:
    calls = HeldCalls()
    linger_s = 1.0
    reporter = lingering_reporter(calls, linger_s=linger_s, may_linger=lambda: True)

    async with asyncio.timeout(10):
        running = asyncio.create_task(reporter.run())
        # Reports one after another, as from a client that waits for each job to end:
        # the third comes soon after two others, lingers, and nobody joins it.
        for call, job in enumerate("abc"):
            await report_answered(reporter, calls, job, call)
        # d and e come a linger after b and c, so they do not linger at all.
        await report_answered(reporter, calls, "d", 3)
        await report_answered(reporter, calls, "e", 4)
        # f comes soon after d and e, and would linger, but skips it: it goes at once,
        # well within the linger.
        async with asyncio.timeout(linger_s / 2):
            await report_answered(reporter, calls, "f", 5)

        assert calls.batches == [["a"], ["b"], ["c"], ["d"], ["e"], ["f"]]
        running.cancel()
