"""Keepalive pings on the clients' channels, against the real operator.

A client's long-lived calls (its SubmitStream, a Watch) sit on one connection that may
stay quiet for hours. The pings must be accepted by the operator however long the quiet
lasts, and must find a connection that died without a word. The intervals are shortened
here (module constants read when a channel or server is made) to a ping a second, as often
as gRPC sends them; the behaviour is the one of the defaults, in seconds instead of tens of
seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import pytest

from jobqueue import channels, errors
from jobqueue.client import AsyncClient, job_spec
from jobqueue.operator import app
from tests.integration.operator.conftest import QUEUE, Operator

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

PING_MS = 1000
PING_TIMEOUT_MS = 1000
SUBMIT_TIMEOUT_S = 15.0


@pytest.fixture(autouse=True)
def frequent_pings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(channels, "KEEPALIVE_TIME_MS", PING_MS)
    monkeypatch.setattr(channels, "KEEPALIVE_TIMEOUT_MS", PING_TIMEOUT_MS)
    # Well under the pings' interval: a ping delayed in a busy moment is no strike.
    monkeypatch.setattr(app, "MIN_PING_INTERVAL_MS", PING_MS // 4)


class SilentProxy:
    """A TCP relay to the operator that can go silent: it then drops every byte both ways
    and closes nothing, as a NAT that forgot the flow does."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.silent = False
        self.port = 0

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                if not self.silent:
                    writer.write(data)
                    await writer.drain()
        writer.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            "127.0.0.1", self.target_port
        )
        await asyncio.gather(
            self._pump(reader, upstream_writer), self._pump(upstream_reader, writer)
        )

    @contextlib.asynccontextmanager
    async def serving(self) -> AsyncIterator[SilentProxy]:
        server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        async with server:
            yield self
            server.close()


async def test_a_quiet_submit_stream_stays_open_on_pings_the_operator_accepts(
    operator: Operator,
) -> None:
    # The operator fixture starts after frequent_pings (autouse fixtures come first).
    async with AsyncClient(f"127.0.0.1:{operator.port}", plaintext=True) as client:
        await client.submit(job_spec(QUEUE, command=["true"]))

        # Quiet for five pings: the time passing is what is tested. An operator that took
        # them for abuse (gRPC's default: more than one in 5 minutes, three times) would
        # end the connection with GOAWAY, and the stream with it.
        await asyncio.sleep(5 * PING_MS / 1000)
        await client.submit(job_spec(QUEUE, command=["true"]))

        assert client.submit_streams_opened == 1


async def test_a_connection_that_dies_silently_fails_the_submit_soon_and_the_next_reconnects(
    operator: Operator,
) -> None:
    async with (
        SilentProxy(operator.port).serving() as proxy,
        AsyncClient(
            f"127.0.0.1:{proxy.port}", plaintext=True, timeout_s=SUBMIT_TIMEOUT_S
        ) as client,
    ):
        await client.submit(job_spec(QUEUE, command=["true"]))
        proxy.silent = True

        began = time.monotonic()
        with pytest.raises(errors.UnavailableError):
            await client.submit(job_spec(QUEUE, command=["true"]))
        noticed_s = time.monotonic() - began
        proxy.silent = False
        after = await client.submit(job_spec(QUEUE, command=["true"]))

        # Found by a ping that went unanswered, long before the submit's own deadline.
        assert noticed_s < SUBMIT_TIMEOUT_S / 2, noticed_s
        assert client.submit_streams_opened == 2
        assert (await operator.parts.store.get(after.id)).id == after.id
