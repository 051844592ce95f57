"""Generate the Python code of the gRPC contract: ``make proto``.

Reads proto/jobqueue/api/v1/*.proto and writes jobqueue/api/v1/*_pb2.py, *_pb2_grpc.py and
their type stubs (mypy-protobuf). The .proto files sit under proto/jobqueue/api/v1/ so the
generated modules import each other as ``jobqueue.api.v1.*``. A test regenerates into a
temporary directory and fails when the committed code has drifted from the contract.

    python scripts/generate_proto.py [OUTPUT_ROOT]   # default: the repository root
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from grpc_tools import protoc

REPOSITORY = Path(__file__).resolve().parents[1]
PROTO_ROOT = REPOSITORY / "proto"


def proto_files() -> list[Path]:
    return sorted((PROTO_ROOT / "jobqueue" / "api" / "v1").glob("*.proto"))


def generate(output_root: Path) -> list[Path]:
    """Write the generated modules under ``output_root``; return the files written."""
    well_known_types = resources.files("grpc_tools") / "_proto"
    # mypy-protobuf's plugins sit beside this interpreter, whether or not that is on PATH.
    scripts = Path(sys.executable).parent
    (output_root / "jobqueue" / "api" / "v1").mkdir(parents=True, exist_ok=True)
    arguments = [
        "grpc_tools.protoc",
        f"--proto_path={PROTO_ROOT}",
        f"--proto_path={well_known_types}",
        f"--python_out={output_root}",
        f"--grpc_python_out={output_root}",
        f"--plugin=protoc-gen-mypy={scripts / 'protoc-gen-mypy'}",
        f"--plugin=protoc-gen-mypy_grpc={scripts / 'protoc-gen-mypy_grpc'}",
        f"--mypy_out={output_root}",
        f"--mypy_grpc_out={output_root}",
        *(str(path.relative_to(PROTO_ROOT)) for path in proto_files()),
    ]
    if protoc.main(arguments) != 0:
        raise SystemExit("protoc failed; see the messages above")
    generated = output_root / "jobqueue" / "api" / "v1"
    return sorted(
        p for p in generated.iterdir() if p.name.endswith((".py", ".pyi")) and "_pb2" in p.name
    )


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else REPOSITORY
    for path in generate(root):
        print(path.relative_to(root))
