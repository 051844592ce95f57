"""The access table covers the whole gRPC contract: no method is callable without a rule."""

from __future__ import annotations

from jobqueue.api.v1 import admin_pb2, jobs_pb2, workers_pb2
from jobqueue.operator.auth.rules import RULES, VERBS, WorkerStep


def contract_methods() -> set[str]:
    methods = set()
    for module in (jobs_pb2, workers_pb2, admin_pb2):
        for service in module.DESCRIPTOR.services_by_name.values():
            methods |= {f"/{service.full_name}/{method.name}" for method in service.methods}
    return methods


def test_every_method_of_the_contract_has_exactly_one_rule() -> None:
    assert set(RULES) == contract_methods()


def test_the_verbs_are_the_documented_ones() -> None:
    assert VERBS == (
        "cancel", "drain", "get", "list", "pause", "resume", "retry", "shutdown", "status",
        "submit", "watch", "work",
    )  # fmt: skip


def test_every_worker_call_needs_work_and_a_registration() -> None:
    worker_rules = {path: rule for path, rule in RULES.items() if "WorkerService" in path}

    assert {rule.verb for rule in worker_rules.values()} == {"work"}
    registering = [
        path for path, rule in worker_rules.items() if rule.worker is WorkerStep.REGISTER
    ]
    assert registering == ["/jobqueue.v1.WorkerService/Register"]
    assert all(rule.worker is not WorkerStep.NONE for rule in worker_rules.values())
