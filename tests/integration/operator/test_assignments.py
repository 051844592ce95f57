"""The assignment a worker gets is the same whether dispatch built it from a whole Job or
from the light row ``claim_for_dispatch`` returns; against real PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from jobqueue.api.v1 import workers_pb2
from jobqueue.operator import convert
from jobqueue.store import JobKind, JobStore, NewJob, QueuePolicy

pytestmark = pytest.mark.integration

JOBS = (
    NewJob(
        "light",
        JobKind.PYTHON,
        {"handler": "tasks:send", "arguments": {"to": "é@x", "n": [1, 2.5, None], "deep": {}}},
        labels={"team": "mail"},
        timeout_s=12.5,
    ),
    NewJob("light", JobKind.PYTHON, {"handler": "tasks:ping"}),
    NewJob(
        "light",
        JobKind.COMMAND,
        {"argv": ["echo", "hi"], "env": {"A": "1"}, "working_directory": "/tmp"},
    ),
)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[JobStore]:
    async with await JobStore.open(database_url) as opened:
        await opened.apply_queue(QueuePolicy("light"))
        yield opened


def comparable(message: workers_pb2.Assignment) -> tuple[str, object]:
    """The assignment, with its arguments as a value: JSON text may differ in spacing."""
    arguments = json.loads(message.python.arguments_json) if message.HasField("python") else None
    message.python.arguments_json = ""
    return message.SerializeToString(deterministic=True).hex(), arguments


async def test_a_light_claim_gives_the_assignment_a_whole_job_gives(store: JobStore) -> None:
    await store.submit_batch(list(JOBS))
    claimed = await store.claim_for_dispatch("light", ["w1", "w2", "w3"], lease_s=30)
    listed, _ = await store.list_jobs(queue="light", limit=10)
    jobs = {job.id: job for job in listed}

    assert len(claimed) == len(JOBS)
    for light in claimed:
        whole = jobs[light.id]
        assert comparable(convert.assignment(light)) == comparable(convert.assignment(whole))
