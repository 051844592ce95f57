from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.unit.cli.scripted_server import ScriptedServer, serve


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedServer]:
    """A scripted gRPC server on loopback; the environment cannot point jqctl elsewhere."""
    monkeypatch.delenv("JQ_SERVER", raising=False)
    monkeypatch.delenv("JQ_TOKEN", raising=False)
    grpc_server, scripted = serve()
    yield scripted
    scripted.released.set()
    grpc_server.stop(grace=None).wait(timeout=5)
