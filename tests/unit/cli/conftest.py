from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.cli.scripted_server import ScriptedServer, serve


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ScriptedServer]:
    """A scripted gRPC server on loopback; the environment cannot point jqctl elsewhere."""
    for variable in ("JQ_SERVER", "JQ_TOKEN", "JQ_TOKEN_FILE", "JQ_CA_FILE", "KUBECONFIG"):
        monkeypatch.delenv(variable, raising=False)
    # Nor can a kubeconfig of the machine lend jqctl a token.
    monkeypatch.setattr("jobqueue.cli.main.DEFAULT_KUBECONFIG", Path("/nonexistent/kubeconfig"))
    grpc_server, scripted = serve()
    yield scripted
    scripted.released.set()
    grpc_server.stop(grace=None).wait(timeout=5)
