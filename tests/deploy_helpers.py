"""What the deployment tests share: the chart and manifests on disk, Helm, and PromQL names.

Helm is the real binary that ``scripts/build-helm.sh`` builds (``make bootstrap`` does it;
a missing build is an error, never a skip). Rendering goes through ``helm template`` so the
tests see exactly what ``helm install`` would send.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from jobqueue.devenv import prerequisites

REPOSITORY = Path(__file__).resolve().parents[1]
CHART = REPOSITORY / "helm" / "jobqueue"
FULL_VALUES = CHART / "ci" / "full-values.yaml"
CRDS = REPOSITORY / "crds"
MANIFESTS = REPOSITORY / "manifests"

HELM_TIMEOUT_S = 60

# The operator's RBAC as decided in issue #6, one (group, resource, verb) per permission.
OPERATOR_PERMISSIONS = frozenset(
    [
        *(
            ("jobqueue.dev", resource, verb)
            for resource in ("jobqueues", "queueworkerpools")
            for verb in ("get", "list", "watch", "patch", "update")
        ),
        *(
            ("jobqueue.dev", f"{resource}/status", verb)
            for resource in ("jobqueues", "queueworkerpools")
            for verb in ("get", "patch", "update")
        ),
        ("jobqueue.dev", "jobqueues/finalizers", "update"),
        ("jobqueue.dev", "queueworkerpools/finalizers", "update"),
        *(
            (group, resource, verb)
            for group, resource in (
                ("apps", "deployments"),
                ("autoscaling", "horizontalpodautoscalers"),
            )
            for verb in ("get", "list", "watch", "create", "patch", "update", "delete")
        ),
        ("", "events", "create"),
        ("", "events", "patch"),
        ("events.k8s.io", "events", "create"),
        ("events.k8s.io", "events", "patch"),
        *(("", "namespaces", verb) for verb in ("get", "list", "watch")),
        *(("", "pods", verb) for verb in ("get", "list", "watch")),
        *(
            ("apiextensions.k8s.io", "customresourcedefinitions", v)
            for v in ("get", "list", "watch")
        ),
        *(
            ("kopf.dev", "clusterkopfpeerings", v)
            for v in ("get", "list", "watch", "patch", "create")
        ),
        ("authentication.k8s.io", "tokenreviews", "create"),
        ("authorization.k8s.io", "subjectaccessreviews", "create"),
    ]
)


def helm_binary() -> Path:
    return prerequisites.helm_bin_dir() / "helm"


def helm(
    *arguments: str, check: bool = True, environment: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run helm; with ``check``, a failure raises with helm's own message in it."""
    result = subprocess.run(
        [str(helm_binary()), *arguments],
        capture_output=True,
        text=True,
        timeout=HELM_TIMEOUT_S,
        env=dict(environment) if environment is not None else None,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"helm {' '.join(arguments)} failed:\n{result.stderr}")
    return result


def render(
    *value_files: Path, sets: Sequence[str] = (), release: str = "jq"
) -> list[dict[str, Any]]:
    """``helm template`` the chart (CRDs included) and return its documents."""
    arguments = ["template", release, str(CHART), "--include-crds", "--namespace", "jobqueue"]
    for path in value_files:
        arguments += ["--values", str(path)]
    for assignment in sets:
        arguments += ["--set", assignment]
    documents = yaml.safe_load_all(helm(*arguments).stdout)
    return [document for document in documents if document]


def only(documents: Iterable[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    """The one document of ``kind`` (and ``name``); fails if there is none or several."""
    found = [
        document
        for document in documents
        if document["kind"] == kind and (name is None or document["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def permissions(cluster_role: dict[str, Any]) -> set[tuple[str, str, str]]:
    """Flatten a role's rules; wildcards and resourceNames would widen it, so they fail."""
    flat = set()
    for rule in cluster_role["rules"]:
        assert "resourceNames" not in rule, rule
        assert "nonResourceURLs" not in rule, rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), rule
                    flat.add((group, resource, verb))
    return flat


# PromQL ---------------------------------------------------------------------------------

# Words that are not metric names where PromQL allows an identifier.
_PROMQL_KEYWORDS = frozenset(
    {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right"}
    | {"bool", "offset", "atan2", "inf", "nan"}
)
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"' + r"|'(?:[^'\\]|\\.)*'")
_LABEL_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(\s*\()?")


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression selects (functions and keywords left out)."""
    text = _STRING.sub('""', expression)
    text = _LABEL_MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    # Dropping the clause leaves "sum (...)", a call, so aggregations are not taken for names.
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word, call = match.group(1), match.group(2)
        if call or word.lower() in _PROMQL_KEYWORDS:
            continue
        names.add(word)
    return names


def label_matchers(expression: str) -> list[tuple[str, str, str]]:
    """Every ``label op "value"`` inside the expression's selectors."""
    matchers = []
    for block in _LABEL_MATCHERS.findall(expression):
        for label, operator, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', block):
            matchers.append((label, operator, value))
    return matchers
