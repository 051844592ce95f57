"""Argo CD's health checks for JobQueue and QueueWorkerPool, run by a real Lua 5.1.

Argo CD runs health scripts in an embedded Lua 5.1 with the resource as the global ``obj``;
here ``lua5.1`` (Debian's, installed by ``make bootstrap``) runs the same files through a
small harness that sets ``obj`` from a fixture and prints the verdict. The fixtures are the
shapes the operator writes: conditions in the ``metav1.Condition`` form, observedGeneration.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy_helpers import MANIFESTS

ARGOCD = MANIFESTS / "argocd"
QUEUE_SCRIPT = ARGOCD / "health-jobqueue.lua"
POOL_SCRIPT = ARGOCD / "health-queueworkerpool.lua"
HARNESS = Path(__file__).with_name("health_harness.lua")
LUA_TIMEOUT_S = 10


def lua_literal(value: Any) -> str:
    """A Python value (as from JSON) written as a Lua table constructor or scalar."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list):
        return "{" + ", ".join(lua_literal(item) for item in value) + "}"
    if isinstance(value, dict):
        fields = (f"[{lua_literal(str(k))}] = {lua_literal(v)}" for k, v in value.items())
        return "{" + ", ".join(fields) + "}"
    raise TypeError(f"no Lua form for {value!r}")


def health(script: Path, resource: dict[str, Any], tmp_path: Path) -> tuple[str, str]:
    lua = shutil.which("lua5.1")
    assert lua, "lua5.1 is missing: run `make bootstrap` (apt-get install lua5.1)"
    fixture = tmp_path / "object.lua"
    fixture.write_text(f"return {lua_literal(resource)}\n")

    result = subprocess.run(
        [lua, str(HARNESS), str(script), str(fixture)],
        capture_output=True,
        text=True,
        timeout=LUA_TIMEOUT_S,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    status, message = result.stdout.split("\n")[:2]
    return status, message


def condition(kind: str, status: str, message: str = "", reason: str = "Reason") -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-12-01T00:00:00Z",
    }


def resource(
    kind: str,
    *,
    generation: int = 2,
    observed: int | None = 2,
    conditions: list[dict[str, Any]] | None = None,
    paused: bool | None = None,
    with_status: bool = True,
) -> dict[str, Any]:
    spec: dict[str, Any] = {"queue": "emails"} if kind == "QueueWorkerPool" else {}
    if paused is not None:
        spec["paused"] = paused
    manifest: dict[str, Any] = {
        "apiVersion": "jobqueue.dev/v1alpha1",
        "kind": kind,
        "metadata": {"name": "emails", "namespace": "apps", "generation": generation},
        "spec": spec,
    }
    if with_status:
        status: dict[str, Any] = {"conditions": conditions or []}
        if observed is not None:
            status["observedGeneration"] = observed
        manifest["status"] = status
    return manifest


READY = condition("Ready", "True", "the queue policy is in force", "PolicyApplied")
NOT_READY = condition("Ready", "False", "1 of 2 workers ready", "WorkersStarting")
DEGRADED = condition("Degraded", "True", "3 jobs dead-lettered in 5 minutes", "DeadLetters")
NOT_DEGRADED = condition("Degraded", "False")

QUEUE_CASES = {
    "no status yet": (resource("JobQueue", with_status=False), "Progressing", "observe"),
    "status without observedGeneration": (
        resource("JobQueue", observed=None, conditions=[READY]),
        "Progressing",
        "observe",
    ),
    "spec newer than status": (
        resource("JobQueue", generation=3, observed=2, conditions=[READY]),
        "Progressing",
        "observe",
    ),
    "ready": (resource("JobQueue", conditions=[READY, NOT_DEGRADED]), "Healthy", "in force"),
    "degraded though ready": (
        resource("JobQueue", conditions=[READY, DEGRADED]),
        "Degraded",
        "dead-lettered",
    ),
    "paused": (resource("JobQueue", paused=True, conditions=[READY]), "Suspended", "paused"),
    "paused and degraded": (
        resource("JobQueue", paused=True, conditions=[READY, DEGRADED]),
        "Degraded",
        "dead-lettered",
    ),
    "paused, spec not yet seen": (
        resource("JobQueue", generation=3, observed=2, paused=True, conditions=[READY]),
        "Progressing",
        "observe",
    ),
    "explicitly not paused": (
        resource("JobQueue", paused=False, conditions=[READY]),
        "Healthy",
        "",
    ),
    "not ready": (resource("JobQueue", conditions=[NOT_READY]), "Progressing", "1 of 2"),
    "ready unknown": (
        resource("JobQueue", conditions=[condition("Ready", "Unknown")]),
        "Progressing",
        "",
    ),
    "no conditions": (resource("JobQueue"), "Progressing", "ready"),
}

POOL_CASES = {
    "no status yet": (resource("QueueWorkerPool", with_status=False), "Progressing", "observe"),
    "spec newer than status": (
        resource("QueueWorkerPool", generation=5, observed=4, conditions=[READY]),
        "Progressing",
        "observe",
    ),
    "ready": (resource("QueueWorkerPool", conditions=[READY]), "Healthy", ""),
    "degraded": (
        resource("QueueWorkerPool", conditions=[NOT_READY, DEGRADED]),
        "Degraded",
        "dead-lettered",
    ),
    "workers starting": (
        resource("QueueWorkerPool", conditions=[NOT_READY]),
        "Progressing",
        "1 of 2",
    ),
    "queue not found": (
        resource(
            "QueueWorkerPool",
            conditions=[condition("QueueFound", "False", "no JobQueue emails"), NOT_READY],
        ),
        "Progressing",
        "",
    ),
    # Pools cannot be paused; a stray field must not make one look suspended.
    "paused field ignored": (
        resource("QueueWorkerPool", paused=True, conditions=[READY]),
        "Healthy",
        "",
    ),
}


@pytest.mark.parametrize(("case"), QUEUE_CASES)
def test_job_queue_health(case: str, tmp_path: Path) -> None:
    manifest, expected, message_part = QUEUE_CASES[case]

    status, message = health(QUEUE_SCRIPT, manifest, tmp_path)

    assert status == expected
    assert message_part in message
    assert message


@pytest.mark.parametrize(("case"), POOL_CASES)
def test_worker_pool_health(case: str, tmp_path: Path) -> None:
    manifest, expected, message_part = POOL_CASES[case]

    status, message = health(POOL_SCRIPT, manifest, tmp_path)

    assert status == expected
    assert message_part in message
    assert message


def test_argocd_cm_snippet_carries_the_scripts_verbatim() -> None:
    config_map = yaml.safe_load((ARGOCD / "argocd-cm.yaml").read_text())

    assert config_map["metadata"]["name"] == "argocd-cm"
    assert config_map["data"] == {
        "resource.customizations.health.jobqueue.dev_JobQueue": QUEUE_SCRIPT.read_text(),
        "resource.customizations.health.jobqueue.dev_QueueWorkerPool": POOL_SCRIPT.read_text(),
    }


def test_harness_reports_a_script_without_a_verdict(tmp_path: Path) -> None:
    broken = tmp_path / "broken.lua"
    broken.write_text("return nil\n")

    with pytest.raises(AssertionError, match="no status"):
        health(broken, resource("JobQueue"), tmp_path)


def test_lua_literal_round_trips_through_lua(tmp_path: Path) -> None:
    # Strings with quotes, backslashes and newlines, nested lists and maps, numbers.
    value = {"a": ['x"y', "back\\slash", "two\nlines"], "b": {"c": 1.5, "d": False}}
    echo = tmp_path / "echo.lua"
    echo.write_text(
        "local hs = {}\n"
        'hs.status = obj.a[1] .. "|" .. obj.a[2]\n'
        'hs.message = tostring(obj.b.c) .. " " .. tostring(obj.b.d) .. " " .. #obj.a[3]\n'
        "return hs\n"
    )

    status, message = health(echo, value, tmp_path)

    assert status == 'x"y|back\\slash'
    # "two\nlines" arrived as nine characters, the newline one of them.
    assert message == "1.5 false 9"
