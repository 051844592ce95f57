"""Submits follow the queue's current policy, though the store remembers policies.

After its first submit to a queue the store validates jobs against the policy it read
then, and inserts them with one statement that checks the queue's row has not changed
since. These tests change a policy between two submits, through the same store and
through another one (another operator replica), and check the second submit obeys the
new policy at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from jobqueue.errors import ConflictError, InvalidInputError, LimitExceededError
from jobqueue.store import JobKind, JobState, JobStore, ManualClock, NewJob
from tests.integration.store.helpers import command, policy

pytestmark = pytest.mark.integration


def python_job(queue: str = "default") -> NewJob:
    return NewJob(queue, JobKind.PYTHON, {"handler": "tasks:run", "arguments": {}})


@pytest.fixture
async def other_replica(database_url: str, clock: ManualClock) -> AsyncIterator[JobStore]:
    async with await JobStore.open(database_url, clock=clock) as opened:
        yield opened


async def test_a_narrowed_policy_refuses_the_next_submit(store: JobStore) -> None:
    await store.apply_queue(policy())
    await store.submit(python_job())

    await store.apply_queue(policy(allowed_kinds=frozenset({JobKind.COMMAND})))

    with pytest.raises(InvalidInputError, match="does not allow python"):
        await store.submit(python_job())


async def test_a_widened_policy_accepts_what_it_refused_before(store: JobStore) -> None:
    await store.apply_queue(policy(allowed_kinds=frozenset({JobKind.COMMAND})))
    await store.submit(command())
    with pytest.raises(InvalidInputError):
        await store.submit(python_job())

    await store.apply_queue(policy())

    assert (await store.submit(python_job())).created


async def test_a_change_by_another_replica_is_obeyed_at_once(
    store: JobStore, other_replica: JobStore
) -> None:
    await store.apply_queue(policy())
    await store.submit(command("default", "echo", "x" * 500))

    await other_replica.apply_queue(policy(payload_limit_bytes=100))

    with pytest.raises(LimitExceededError, match="payload_limit_bytes"):
        await store.submit(command("default", "echo", "x" * 500))
    assert (await store.submit(command("default", "echo", "small"))).created


async def test_a_closed_queue_refuses_the_next_submit(store: JobStore) -> None:
    await store.apply_queue(policy())
    await store.submit(command())

    await store.close_queue("default")

    with pytest.raises(ConflictError, match="being deleted"):
        await store.submit(command())


async def test_a_queue_deleted_and_created_again_gives_its_new_defaults(
    store: JobStore, other_replica: JobStore
) -> None:
    await store.apply_queue(policy(max_attempts=3))
    first = (await store.submit(command())).job
    await other_replica.cancel_unfinished("default", reason="recreating the queue")
    await other_replica.delete_queue("default")
    await other_replica.apply_queue(policy(max_attempts=5))

    again = (await store.submit(command())).job

    assert first.max_attempts == 3
    assert again.max_attempts == 5
    assert again.state is JobState.PENDING


async def test_idempotent_submits_through_the_remembered_policy_find_the_first_job(
    store: JobStore,
) -> None:
    await store.apply_queue(policy())
    await store.submit(command())
    first = await store.submit(command(idempotency_key="k"))

    second = await store.submit(command(idempotency_key="k"))

    assert first.created
    assert not second.created
    assert second.job.id == first.job.id


async def test_submits_go_on_while_another_replica_pauses_and_resumes_the_queue(
    store: JobStore, other_replica: JobStore
) -> None:
    # A pause changes the queue's row: the next submit reads the policy again under its
    # lock, and a pause committed during that transaction must not fail it.
    await store.apply_queue(policy())

    async def submit_many() -> int:
        results = [await store.submit(command()) for _ in range(150)]
        return sum(result.created for result in results)

    async def toggle() -> None:
        for index in range(150):
            await other_replica.set_paused("default", index % 2 == 0)

    created, _ = await asyncio.gather(submit_many(), toggle())

    assert created == 150
