"""The clients' bearer token travels as ``authorization`` metadata on every call."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from jobqueue.client import AsyncClient, Client
from tests.unit.cli.scripted_server import ScriptedServer, sample_job, serve


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    grpc_server, scripted = serve()
    scripted.jobs["job-1"] = sample_job("job-1")
    yield scripted
    grpc_server.stop(grace=None).wait(timeout=5)


def test_the_blocking_client_sends_its_token_on_calls_and_watches(server: ScriptedServer) -> None:
    with Client(server.address, plaintext=True, token="s3cret") as client:
        client.get("job-1")
        list(client.watch("job-1"))

    assert [m.get("authorization") for m in server.metadata] == ["Bearer s3cret"] * 2


async def test_the_async_client_sends_its_token_on_calls_and_watches(
    server: ScriptedServer,
) -> None:
    async with AsyncClient(server.address, plaintext=True, token="s3cret") as client:
        await client.get("job-1")
        async for _ in client.watch("job-1"):
            pass

    assert [m.get("authorization") for m in server.metadata] == ["Bearer s3cret"] * 2


def test_without_a_token_no_authorization_is_sent(server: ScriptedServer) -> None:
    with Client(server.address, plaintext=True) as client:
        client.get("job-1")

    assert "authorization" not in server.metadata[0]
