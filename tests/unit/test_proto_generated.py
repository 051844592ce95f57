"""The committed gRPC code is exactly what ``make proto`` generates from proto/."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[2]


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location(
        "generate_proto", REPOSITORY / "scripts" / "generate_proto.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["generate_proto"] = module
    spec.loader.exec_module(module)
    return module


def test_generated_code_matches_the_proto_files(tmp_path: Path) -> None:
    generator = _generator()

    fresh = generator.generate(tmp_path)

    committed_dir = REPOSITORY / "jobqueue" / "api" / "v1"
    committed = sorted(p.name for p in committed_dir.iterdir() if "_pb2" in p.name)
    assert [p.name for p in fresh] == committed, "run `make proto`: files were added or removed"
    stale = [p.name for p in fresh if p.read_bytes() != (committed_dir / p.name).read_bytes()]
    assert stale == [], f"run `make proto`: {', '.join(stale)} drifted from proto/"


def test_services_of_the_contract_are_importable() -> None:
    from jobqueue.api.v1 import admin_pb2_grpc, jobs_pb2, jobs_pb2_grpc, workers_pb2_grpc

    assert jobs_pb2.JobState.Name(jobs_pb2.JOB_STATE_DEAD_LETTERED) == "JOB_STATE_DEAD_LETTERED"
    assert hasattr(jobs_pb2_grpc, "JobServiceServicer")
    assert hasattr(workers_pb2_grpc, "WorkerServiceServicer")
    assert hasattr(admin_pb2_grpc, "AdminServiceServicer")
