"""The async client's single submits: one ``SubmitStream`` call for all, ``Submit`` calls
for an operator without it.

The operator's side of the stream (admission, answers, refusals) is tested against the
real operator in ``tests/integration/operator/test_submit_stream.py``; here the server
is the scripted one, and what is tested is the client's choice of call.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from jobqueue import errors
from jobqueue.api.v1 import jobs_pb2
from jobqueue.client import AsyncClient, job_spec
from tests.unit.cli.scripted_server import ScriptedServer, StreamingScriptedServer, serve

pytestmark = pytest.mark.timeout(20)


class ChangingToken:
    """A token source whose token the test changes, as a rotated token file would."""

    def __init__(self, value: str) -> None:
        self.value = value

    def token(self) -> str | None:
        return self.value


def echo(queue: str = "emails") -> jobs_pb2.JobSpec:
    return job_spec(queue, command=["echo", "hi"])


@pytest.fixture
def streaming() -> Iterator[StreamingScriptedServer]:
    grpc_server, scripted = serve(streaming=True)
    assert isinstance(scripted, StreamingScriptedServer)
    yield scripted
    grpc_server.stop(grace=None).wait(timeout=5)


@pytest.fixture
def unary_only() -> Iterator[ScriptedServer]:
    grpc_server, scripted = serve()
    yield scripted
    grpc_server.stop(grace=None).wait(timeout=5)


async def test_concurrent_submits_share_one_stream_and_each_gets_its_job(
    streaming: StreamingScriptedServer,
) -> None:
    async with AsyncClient(streaming.address, plaintext=True) as client:
        jobs = await asyncio.gather(*(client.submit(echo()) for _ in range(20)))

        assert client.submit_streams_opened == 1
    assert len({job.id for job in jobs}) == 20
    assert streaming.streams_opened == 1
    assert not streaming.requests_of(jobs_pb2.SubmitRequest)


async def test_a_new_token_opens_a_new_stream_that_carries_it(
    streaming: StreamingScriptedServer,
) -> None:
    token = ChangingToken("first")
    async with AsyncClient(streaming.address, plaintext=True, token=token) as client:
        await client.submit(echo())
        await client.submit(echo())
        token.value = "second"
        await client.submit(echo())

        assert client.submit_streams_opened == 2
    sent = [metadata.get("authorization") for metadata in streaming.metadata]
    assert sent == ["Bearer first", "Bearer first", "Bearer second"]


async def test_an_unanswered_submit_times_out_and_the_stream_goes_on(
    streaming: StreamingScriptedServer,
) -> None:
    async with AsyncClient(streaming.address, plaintext=True, timeout_s=0.5) as client:
        with pytest.raises(errors.UnavailableError, match="no answer on the SubmitStream"):
            await client.submit(echo(StreamingScriptedServer.SILENT_QUEUE))
        job = await client.submit(echo())

        assert client.submit_streams_opened == 1
    assert job.spec.queue == "emails"


async def test_an_operator_without_submit_stream_is_sent_submit_calls(
    unary_only: ScriptedServer,
) -> None:
    # Several clients, each submitting several jobs at once: none of them may fail on the
    # stream the server refuses (a write racing with its end used to come out INTERNAL).
    for _ in range(10):
        async with AsyncClient(unary_only.address, plaintext=True) as client:
            first = await asyncio.gather(*(client.submit(echo()) for _ in range(5)))
            later = await client.submit(echo())

            assert client.submit_streams_opened == 1  # tried once, never again
        assert len({job.id for job in [*first, later]}) == 6
    assert len(unary_only.requests_of(jobs_pb2.SubmitRequest)) == 60


async def test_a_client_told_not_to_stream_sends_submit_calls(
    streaming: StreamingScriptedServer,
) -> None:
    async with AsyncClient(streaming.address, plaintext=True, stream_submits=False) as client:
        await client.submit(echo())

        assert client.submit_streams_opened == 0
    assert streaming.streams_opened == 0
    assert len(streaming.requests_of(jobs_pb2.SubmitRequest)) == 1
