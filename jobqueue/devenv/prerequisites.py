"""Where the local environment finds its programs, and one clear message when one is missing.

PostgreSQL, Redis and Java come from Debian's packages; the Kubernetes control plane, Helm
and the Kafka broker's jars are built or fetched once by the scripts in ``scripts/`` and kept
under ``~/.cache/jobqueue`` (``JQ_CACHE_DIR``). ``make test``, ``make demo`` and
``make dev-env`` install all of it; running the environment without them ends in a
``PrerequisiteMissingError`` that says what to install.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from jobqueue.errors import PrerequisiteMissingError

_REPOSITORY = Path(__file__).resolve().parents[2]
_SCRIPTS = _REPOSITORY / "scripts"
_INSTALL_HINT = "run `make bootstrap` in the jobqueue checkout, which installs everything"


def postgres_bin_dir() -> Path:
    """The newest installed PostgreSQL server's bin directory (Debian keeps them versioned)."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/postgres"),
        key=lambda path: int(path.parent.parent.name) if path.parent.parent.name.isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    found = shutil.which("postgres")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    raise PrerequisiteMissingError(
        f"PostgreSQL server not found: apt-get install postgresql (or {_INSTALL_HINT})"
    )


def program(name: str, *, package: str) -> Path:
    found = shutil.which(name)
    if not found:
        raise PrerequisiteMissingError(
            f"{name} not found on PATH: apt-get install {package} (or {_INSTALL_HINT})"
        )
    return Path(found)


def _cached_build(script: str, what: str) -> Path:
    """Run one of the build scripts (a no-op once cached) and return the path it prints."""
    path = _SCRIPTS / script
    if not path.exists():
        raise PrerequisiteMissingError(
            f"{what} is built by {script}, which is only in a jobqueue source checkout"
        )
    try:
        result = subprocess.run(
            ["bash", str(path)], check=True, capture_output=True, text=True, env=os.environ
        )
    except subprocess.CalledProcessError as error:
        raise PrerequisiteMissingError(
            f"building {what} failed ({script}):\n{error.stderr.strip()[-2000:]}"
        ) from error
    return Path(result.stdout.strip().splitlines()[-1])


def control_plane_bin_dir() -> Path:
    """etcd, kube-apiserver, kube-controller-manager and kubectl, built from the Go proxy."""
    return _cached_build("build-control-plane.sh", "the Kubernetes control plane")


def kafka_lib_dir() -> Path:
    """The Kafka broker's jars, fetched from Maven Central."""
    program("java", package="openjdk-17-jre-headless")
    return _cached_build("fetch-kafka.sh", "the Kafka broker")


def helm_bin_dir() -> Path:
    """Helm v4, built from the Go proxy; the chart's tests run it."""
    return _cached_build("build-helm.sh", "Helm")
