"""Client channels: the token on every call shape, read anew when its file changes."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobqueue.api.v1 import jobs_pb2, jobs_pb2_grpc, workers_pb2, workers_pb2_grpc
from jobqueue.channels import ChannelSecurity, open_aio_channel
from jobqueue.credentials import TokenFile
from jobqueue.errors import ConfigError
from tests.unit.cli.scripted_server import ScriptedServer, sample_job, serve
from tests.unit.worker.scripted_operator import ScriptedOperator, start_server


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    grpc_server, scripted = serve()
    scripted.jobs["job-1"] = sample_job("job-1")
    yield scripted
    grpc_server.stop(grace=None).wait(timeout=5)


async def test_unary_and_streaming_calls_carry_the_current_token_of_the_file(
    server: ScriptedServer, tmp_path: Path
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("first\n")
    security = ChannelSecurity(insecure_plaintext=True, token=TokenFile(token_file))

    async with open_aio_channel(server.address, security) as channel:
        stub = jobs_pb2_grpc.JobServiceStub(channel)
        await stub.Get(jobs_pb2.GetJobRequest(id="job-1"))
        async for _ in stub.Watch(jobs_pb2.WatchJobRequest(id="job-1")):
            pass
        token_file.write_text("rotated-by-the-kubelet")
        await stub.Get(jobs_pb2.GetJobRequest(id="job-1"))

    assert [m.get("authorization") for m in server.metadata] == [
        "Bearer first",
        "Bearer first",
        "Bearer rotated-by-the-kubelet",
    ]


async def test_a_bidirectional_stream_carries_the_token(tmp_path: Path) -> None:
    operator = ScriptedOperator()
    grpc_server, port = await start_server(operator)
    security = ChannelSecurity(insecure_plaintext=True, token=TokenFile(token_file(tmp_path)))
    try:
        async with open_aio_channel(f"127.0.0.1:{port}", security) as channel:
            call = workers_pb2_grpc.WorkerServiceStub(channel).Report()
            await call.write(workers_pb2.ReportBatch(id=1, worker_id="w"))
            answer = await call.read()
            call.cancel()
    finally:
        await grpc_server.stop(grace=None)

    assert isinstance(answer, workers_pb2.ReportAnswer)
    assert answer.id == 1
    assert operator.report_authorizations == ["Bearer secret"]


def token_file(directory: Path) -> Path:
    path = directory / "token"
    path.write_text("secret")
    return path


def test_a_token_file_that_disappears_keeps_the_last_token_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("kept")
    source = TokenFile(token_file)
    assert source.token() == "kept"

    token_file.unlink()
    with caplog.at_level(logging.WARNING):
        assert source.token() == "kept"
        assert source.token() == "kept"

    assert len(caplog.records) == 1
    assert TokenFile(tmp_path / "never-there").token() is None


def test_a_token_file_checked_at_start_must_hold_a_token(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")

    with pytest.raises(ConfigError, match="is empty"):
        TokenFile(empty).check()
    with pytest.raises(ConfigError, match="cannot read the token file"):
        TokenFile(tmp_path / "missing").check()


def test_plaintext_together_with_tls_settings_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="choose one"):
        ChannelSecurity(insecure_plaintext=True, ca_file=tmp_path / "ca.crt")
