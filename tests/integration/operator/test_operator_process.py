"""``jobqueue-operator`` as a program: its dry run, and a clean stop on SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from jobqueue.devenv import Environment
from jobqueue.devenv.processes import free_port, port_open
from tests.conftest import KafkaTarget
from tests.integration.operator.conftest import REPOSITORY, operator_environment

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def run_operator(environment: dict[str, str], *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "jobqueue.operator.main", *arguments],
        env=environment,
        cwd=REPOSITORY,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_dry_run_reports_every_dependency_and_exits_zero(
    devenv: Environment, database_url: str, redis_url: str, kafka: KafkaTarget
) -> None:
    completed = run_operator(
        operator_environment(devenv, database_url, redis_url, kafka), "--dry-run"
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = {line.split()[0]: line.split()[1] for line in completed.stdout.splitlines()}
    assert lines == {
        "postgresql": "ok", "redis": "ok", "kafka": "ok", "kubernetes": "ok", "tls": "ok"
    }  # fmt: skip


def test_dry_run_with_a_dependency_down_names_it_and_exits_one(
    devenv: Environment, database_url: str, kafka: KafkaTarget
) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    completed = run_operator(operator_environment(devenv, database_url, closed, kafka), "--dry-run")

    assert completed.returncode == 1
    lines = {line.split()[0]: line for line in completed.stdout.splitlines()}
    assert "ok" not in lines["redis"].split()[1]
    assert lines["postgresql"].split()[1] == "ok"


def test_bad_configuration_exits_two_naming_the_setting(
    devenv: Environment, database_url: str, redis_url: str, kafka: KafkaTarget
) -> None:
    environment = operator_environment(
        devenv, database_url, redis_url, kafka, JQ_OPERATOR_LEASE_S="soon"
    )
    completed = run_operator(environment, "--dry-run")

    assert completed.returncode == 2
    assert "operator.lease_s" in completed.stderr


def test_sigterm_stops_a_reconciling_operator_cleanly(
    devenv: Environment, database_url: str, redis_url: str, kafka: KafkaTarget, namespace: str
) -> None:
    grpc_port = free_port()
    environment = operator_environment(
        devenv,
        database_url,
        redis_url,
        kafka,
        JQ_OPERATOR_GRPC_ADDRESS=f"127.0.0.1:{grpc_port}",
        JQ_OPERATOR_HTTP_ADDRESS=f"127.0.0.1:{free_port()}",
        JQ_OPERATOR_NAMESPACES=namespace,
        JQ_OPERATOR_STANDALONE="true",
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "jobqueue.operator.main"],
        env=environment,
        cwd=REPOSITORY,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not port_open(grpc_port):
            assert process.poll() is None, process.communicate()[0]
            assert time.monotonic() < deadline, "the operator never served gRPC"
            time.sleep(0.05)

        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()

    assert process.returncode == 0, output
    # Started, it set its start-up objects aside from garbage collection (jobqueue.memory).
    assert "start-up objects aside from garbage collection" in output
    assert "Stopping" in output
    assert "Traceback" not in output
