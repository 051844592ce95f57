"""The ``jobqueue.dev`` custom resources seen from Python: names, parsed specs, installation.

The CRDs in ``crds/`` are the contract: the API server defaults and validates every
JobQueue and QueueWorkerPool before anyone reads it. The parsers here repeat those
defaults and bounds on purpose, so a spec built by hand (a unit test, a dry run, a
manifest read from disk) becomes the same frozen value as one read from the cluster, and
a bad one fails with an ``InvalidInputError`` naming the field by its manifest path
(``spec.backoff.initialSeconds``). The defaults are thus written twice, in the YAML and
here; a test reads back what the API server defaulted and checks both agree.

Field names follow the project's vocabulary with units in the name (``timeout_s``);
manifest names follow Kubernetes' camelCase with units spelled out (``timeoutSeconds``).

``install_crds`` and ``apply_resource`` use server-side apply, so running them again, or
from two processes at once (the operator, the demo, tests), is harmless.
This module may use the Kubernetes client but never kopf or gRPC: the operator, the demo
and tests all import it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, TypeVar, cast, get_args

import urllib3
import yaml
from kubernetes import client as kube_client
from kubernetes import config as kube_config

from jobqueue.errors import (
    ConflictError,
    InvalidInputError,
    JobQueueError,
    NotFoundError,
    PermissionDeniedError,
    PrerequisiteMissingError,
    UnauthenticatedError,
    UnavailableError,
)

logger = logging.getLogger(__name__)

GROUP: Final = "jobqueue.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"
# Both kinds belong to this category and only to it: `kubectl get jobqueue-all`.
CATEGORY: Final = "jobqueue-all"

JOB_QUEUE_KIND: Final = "JobQueue"
JOB_QUEUE_PLURAL: Final = "jobqueues"
JOB_QUEUE_SINGULAR: Final = "jobqueue"
JOB_QUEUE_SHORT_NAME: Final = "jq"

WORKER_POOL_KIND: Final = "QueueWorkerPool"
WORKER_POOL_PLURAL: Final = "queueworkerpools"
WORKER_POOL_SINGULAR: Final = "queueworkerpool"
WORKER_POOL_SHORT_NAME: Final = "qwp"

PLURALS: Final[Mapping[str, str]] = MappingProxyType(
    {JOB_QUEUE_KIND: JOB_QUEUE_PLURAL, WORKER_POOL_KIND: WORKER_POOL_PLURAL}
)

# The condition types the operator writes into each kind's status.
JOB_QUEUE_CONDITIONS: Final = ("Ready", "Paused", "Degraded")
WORKER_POOL_CONDITIONS: Final = ("Ready", "QueueFound", "Degraded")

# The field manager named in every server-side apply this module makes.
FIELD_MANAGER: Final = "jobqueue"

JobKind = Literal["Command", "Python"]
DeletionPolicy = Literal["Drain", "Cancel"]
ImagePullPolicy = Literal["Always", "IfNotPresent", "Never"]

JOB_KINDS: Final[tuple[JobKind, ...]] = get_args(JobKind)
DELETION_POLICIES: Final[tuple[DeletionPolicy, ...]] = get_args(DeletionPolicy)
IMAGE_PULL_POLICIES: Final[tuple[ImagePullPolicy, ...]] = get_args(ImagePullPolicy)

_Choice = TypeVar("_Choice", bound=str)


# Specs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BackoffPolicy:
    """The delay before a retry: ``initial_s * multiplier**(retry - 1)``, capped, jittered."""

    initial_s: float = 1.0
    multiplier: float = 2.0
    max_s: float = 300.0
    jitter: float = 0.1  # fraction of each delay that is randomised


@dataclass(frozen=True)
class RateLimit:
    """A token bucket: ``per_second`` tokens refill it, it holds at most ``burst``."""

    per_second: float
    burst: int


@dataclass(frozen=True)
class RetentionPolicy:
    """How long finished jobs are kept; dead-lettered and cancelled ones count as failed."""

    succeeded_s: int = 86_400  # one day
    failed_s: int = 604_800  # one week


@dataclass(frozen=True)
class JobQueueSpec:
    """A JobQueue's policy, every default filled in."""

    max_attempts: int = 3
    backoff: BackoffPolicy = field(default_factory=BackoffPolicy)
    timeout_s: float = 600.0  # one attempt's execution timeout
    paused: bool = False
    concurrency_limit: int | None = None  # None: unlimited
    rate_limit: RateLimit | None = None  # None: unlimited
    retention: RetentionPolicy = field(default_factory=RetentionPolicy)
    deletion_policy: DeletionPolicy = "Drain"
    allowed_kinds: frozenset[JobKind] = frozenset({"Command", "Python"})
    payload_limit_bytes: int = 262_144  # 256 KiB

    @classmethod
    def from_manifest(cls, spec: Mapping[str, Any] | None) -> JobQueueSpec:
        """Parse a JobQueue's ``spec``, filling defaults as the API server does."""
        fields = _Fields("spec", {} if spec is None else spec)
        fields.refuse_unknown(
            "maxAttempts", "backoff", "timeoutSeconds", "paused", "concurrencyLimit",
            "rateLimit", "retention", "deletionPolicy", "allowedKinds", "payloadLimitBytes",
        )  # fmt: skip

        rate_limit = fields.optional_object("rateLimit")
        return cls(
            max_attempts=fields.integer("maxAttempts", 3, minimum=1, maximum=100),
            backoff=_parse_backoff(fields.object("backoff")),
            timeout_s=fields.number("timeoutSeconds", 600.0, above=0.0, maximum=604_800.0),
            paused=fields.boolean("paused", default=False),
            concurrency_limit=fields.optional_integer("concurrencyLimit", minimum=1),
            rate_limit=None if rate_limit is None else _parse_rate_limit(rate_limit),
            retention=_parse_retention(fields.object("retention")),
            deletion_policy=fields.choice("deletionPolicy", DELETION_POLICIES, "Drain"),
            allowed_kinds=fields.choice_set("allowedKinds", JOB_KINDS),
            payload_limit_bytes=fields.integer(
                "payloadLimitBytes", 262_144, minimum=1, maximum=16 * 1024 * 1024
            ),
        )


def _parse_backoff(fields: _Fields) -> BackoffPolicy:
    fields.refuse_unknown("initialSeconds", "multiplier", "maxSeconds", "jitter")
    backoff = BackoffPolicy(
        initial_s=fields.number("initialSeconds", 1.0, above=0.0),
        multiplier=fields.number("multiplier", 2.0, minimum=1.0, maximum=10.0),
        max_s=fields.number("maxSeconds", 300.0, above=0.0),
        jitter=fields.number("jitter", 0.1, minimum=0.0, maximum=1.0),
    )
    if backoff.initial_s > backoff.max_s:
        raise InvalidInputError(
            f"{fields.path}.initialSeconds: backoff.initialSeconds must not exceed "
            f"backoff.maxSeconds ({backoff.initial_s:g} > {backoff.max_s:g})"
        )
    return backoff


def _parse_rate_limit(fields: _Fields) -> RateLimit:
    fields.refuse_unknown("perSecond", "burst")
    per_second = fields.required_number("perSecond", above=0.0)

    # A bucket holding less than one second of rate would cap a once-a-second batch of
    # claims below the stated rate.
    burst = fields.optional_integer("burst", minimum=1)
    return RateLimit(per_second=per_second, burst=burst or math.ceil(per_second))


def _parse_retention(fields: _Fields) -> RetentionPolicy:
    fields.refuse_unknown("succeededSeconds", "failedSeconds")
    return RetentionPolicy(
        succeeded_s=fields.integer("succeededSeconds", 86_400, minimum=0),
        failed_s=fields.integer("failedSeconds", 604_800, minimum=0),
    )


@dataclass(frozen=True)
class WorkerTemplate:
    """What goes into each worker pod; the Kubernetes-shaped parts are kept as given."""

    image: str
    image_pull_policy: ImagePullPolicy | None = None  # None: Kubernetes decides
    resources: Mapping[str, Any] = field(default_factory=dict)
    env: tuple[Mapping[str, Any], ...] = ()
    env_from: tuple[Mapping[str, Any], ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    tolerations: tuple[Mapping[str, Any], ...] = ()
    affinity: Mapping[str, Any] | None = None
    service_account_name: str | None = None
    args: tuple[str, ...] = ()  # appended to the worker's own arguments
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AutoscalingBounds:
    """Bounds for the HorizontalPodAutoscaler that scales a pool on queue depth."""

    max_replicas: int
    min_replicas: int = 1
    target_pending_per_worker: int = 10


@dataclass(frozen=True)
class WorkerPoolSpec:
    """A QueueWorkerPool's desired workers, every default filled in."""

    queue: str
    template: WorkerTemplate
    replicas: int = 1
    concurrency: int = 4  # jobs per worker
    autoscaling: AutoscalingBounds | None = None  # None: replicas is fixed
    drain_grace_s: int = 30

    @classmethod
    def from_manifest(cls, spec: Mapping[str, Any] | None) -> WorkerPoolSpec:
        """Parse a QueueWorkerPool's ``spec``, filling defaults as the API server does."""
        if spec is None:
            raise InvalidInputError("spec: is required (it names the queue and the image)")
        fields = _Fields("spec", spec)
        fields.refuse_unknown(
            "queue", "replicas", "concurrency", "template", "autoscaling", "drainGraceSeconds"
        )

        autoscaling = fields.optional_object("autoscaling")
        return cls(
            queue=fields.required_string("queue", pattern=_DNS_LABEL, max_length=63),
            template=_parse_template(fields.required_object("template")),
            replicas=fields.integer("replicas", 1, minimum=0),
            concurrency=fields.integer("concurrency", 4, minimum=1, maximum=1000),
            autoscaling=None if autoscaling is None else _parse_autoscaling(autoscaling),
            drain_grace_s=fields.integer("drainGraceSeconds", 30, minimum=0, maximum=86_400),
        )


def _parse_template(fields: _Fields) -> WorkerTemplate:
    fields.refuse_unknown(
        "image", "imagePullPolicy", "resources", "env", "envFrom", "nodeSelector",
        "tolerations", "affinity", "serviceAccountName", "args", "labels", "annotations",
    )  # fmt: skip

    env = fields.object_list("env")
    for index, variable in enumerate(env):
        if not isinstance(variable.get("name"), str) or not variable["name"]:
            raise InvalidInputError(f"{fields.path}.env[{index}].name: is required")
    return WorkerTemplate(
        image=fields.required_string("image"),
        image_pull_policy=fields.optional_choice("imagePullPolicy", IMAGE_PULL_POLICIES),
        resources=fields.mapping("resources"),
        env=env,
        env_from=fields.object_list("envFrom"),
        node_selector=fields.string_map("nodeSelector"),
        tolerations=fields.object_list("tolerations"),
        affinity=fields.optional_mapping("affinity"),
        service_account_name=fields.optional_string("serviceAccountName"),
        args=fields.string_list("args"),
        labels=fields.string_map("labels"),
        annotations=fields.string_map("annotations"),
    )


def _parse_autoscaling(fields: _Fields) -> AutoscalingBounds:
    fields.refuse_unknown("minReplicas", "maxReplicas", "targetPendingPerWorker")
    bounds = AutoscalingBounds(
        max_replicas=fields.required_integer("maxReplicas", minimum=1),
        min_replicas=fields.integer("minReplicas", 1, minimum=0),
        target_pending_per_worker=fields.integer("targetPendingPerWorker", 10, minimum=1),
    )
    if bounds.min_replicas > bounds.max_replicas:
        raise InvalidInputError(
            f"{fields.path}.minReplicas: autoscaling.minReplicas must not exceed "
            f"autoscaling.maxReplicas ({bounds.min_replicas} > {bounds.max_replicas})"
        )
    return bounds


# Reading manifest fields ---------------------------------------------------------------

_DNS_LABEL: Final = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"

_MISSING: Final = object()


class _Fields:
    """One manifest object's fields, read with defaults and bounds; errors name the path."""

    def __init__(self, path: str, values: Mapping[str, Any]) -> None:
        if not isinstance(values, Mapping):
            raise InvalidInputError(f"{path}: must be an object, got {values!r}")
        self.path = path
        self.values = values

    def refuse_unknown(self, *known: str) -> None:
        # The API server prunes unknown fields silently; here a typo should be loud.
        unknown = sorted(str(name) for name in self.values if name not in known)
        if unknown:
            raise InvalidInputError(
                f"{self.path}.{unknown[0]}: is not a field of {self.path}; "
                f"known: {', '.join(known)}"
            )

    def _get(self, name: str) -> Any:
        value = self.values.get(name, _MISSING)
        return _MISSING if value is None else value

    def _fail(self, name: str, expected: str, value: Any) -> InvalidInputError:
        return InvalidInputError(f"{self.path}.{name}: must be {expected}, got {value!r}")

    def _check_range(
        self, name: str, value: float, *, minimum: float | None, maximum: float | None
    ) -> None:
        if minimum is not None and value < minimum:
            raise self._fail(name, f"at least {minimum:g}", value)
        if maximum is not None and value > maximum:
            raise self._fail(name, f"at most {maximum:g}", value)

    def integer(
        self, name: str, default: int, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value = self.optional_integer(name, minimum=minimum, maximum=maximum)
        return default if value is None else value

    def required_integer(
        self, name: str, *, minimum: int | None = None, maximum: int | None = None
    ) -> int:
        value = self.optional_integer(name, minimum=minimum, maximum=maximum)
        if value is None:
            raise InvalidInputError(f"{self.path}.{name}: is required")
        return value

    def optional_integer(
        self, name: str, *, minimum: int | None = None, maximum: int | None = None
    ) -> int | None:
        value = self._get(name)
        if value is _MISSING:
            return None
        # bool is an int to Python but not to the API server.
        if isinstance(value, bool) or not isinstance(value, int):
            raise self._fail(name, "an integer", value)
        self._check_range(name, value, minimum=minimum, maximum=maximum)
        return value

    def number(
        self,
        name: str,
        default: float,
        *,
        above: float | None = None,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        value = self._get(name)
        if value is _MISSING:
            return default
        return self._number(name, value, above=above, minimum=minimum, maximum=maximum)

    def required_number(self, name: str, *, above: float | None = None) -> float:
        value = self._get(name)
        if value is _MISSING:
            raise InvalidInputError(f"{self.path}.{name}: is required")
        return self._number(name, value, above=above)

    def _number(
        self,
        name: str,
        value: Any,
        *,
        above: float | None = None,
        minimum: float | None = None,
        maximum: float | None = None,
    ) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise self._fail(name, "a number", value)
        if above is not None and value <= above:
            raise self._fail(name, f"greater than {above:g}", value)
        self._check_range(name, value, minimum=minimum, maximum=maximum)
        return float(value)

    def boolean(self, name: str, *, default: bool) -> bool:
        value = self._get(name)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            raise self._fail(name, "true or false", value)
        return value

    def optional_string(self, name: str) -> str | None:
        value = self._get(name)
        if value is _MISSING:
            return None
        if not isinstance(value, str):
            raise self._fail(name, "a string", value)
        return value

    def required_string(
        self, name: str, *, pattern: str | None = None, max_length: int | None = None
    ) -> str:
        value = self.optional_string(name)
        if not value:
            raise InvalidInputError(f"{self.path}.{name}: is required and must not be empty")
        if max_length is not None and len(value) > max_length:
            raise self._fail(name, f"at most {max_length} characters", value)
        if pattern is not None and not re.fullmatch(pattern, value):
            raise self._fail(name, "a DNS-1123 label (lowercase letters, digits, '-')", value)
        return value

    def choice(self, name: str, allowed: tuple[_Choice, ...], default: _Choice) -> _Choice:
        value = self.optional_choice(name, allowed)
        return default if value is None else value

    def optional_choice(self, name: str, allowed: tuple[_Choice, ...]) -> _Choice | None:
        value = self._get(name)
        if value is _MISSING:
            return None
        if value not in allowed:
            raise self._fail(name, f"one of {', '.join(allowed)}", value)
        return cast(_Choice, value)

    def choice_set(self, name: str, allowed: tuple[_Choice, ...]) -> frozenset[_Choice]:
        """A list of distinct choices, every choice when absent (as the CRD defaults it)."""
        value = self._get(name)
        if value is _MISSING:
            return frozenset(allowed)
        if not isinstance(value, list) or not value:
            raise self._fail(name, f"a non-empty list of {', '.join(allowed)}", value)
        for index, item in enumerate(value):
            if item not in allowed:
                raise self._fail(f"{name}[{index}]", f"one of {', '.join(allowed)}", item)
        if len(set(value)) != len(value):
            raise self._fail(name, "a list without duplicates", value)
        return frozenset(value)

    def object(self, name: str) -> _Fields:
        """A nested object whose own fields all have defaults; absent reads as empty."""
        value = self._get(name)
        return _Fields(f"{self.path}.{name}", {} if value is _MISSING else value)

    def optional_object(self, name: str) -> _Fields | None:
        value = self._get(name)
        return None if value is _MISSING else _Fields(f"{self.path}.{name}", value)

    def required_object(self, name: str) -> _Fields:
        value = self.optional_object(name)
        if value is None:
            raise InvalidInputError(f"{self.path}.{name}: is required")
        return value

    def optional_mapping(self, name: str) -> Mapping[str, Any] | None:
        value = self._get(name)
        if value is _MISSING:
            return None
        if not isinstance(value, Mapping):
            raise self._fail(name, "an object", value)
        return MappingProxyType(dict(value))

    def mapping(self, name: str) -> Mapping[str, Any]:
        return self.optional_mapping(name) or MappingProxyType({})

    def string_map(self, name: str) -> Mapping[str, str]:
        value = self.mapping(name)
        for key, item in value.items():
            if not isinstance(item, str):
                raise self._fail(f"{name}.{key}", "a string", item)
        return value

    def object_list(self, name: str) -> tuple[Mapping[str, Any], ...]:
        value = self._get(name)
        if value is _MISSING:
            return ()
        if not isinstance(value, list):
            raise self._fail(name, "a list of objects", value)
        for index, item in enumerate(value):
            if not isinstance(item, Mapping):
                raise self._fail(f"{name}[{index}]", "an object", item)
        return tuple(MappingProxyType(dict(item)) for item in value)

    def string_list(self, name: str) -> tuple[str, ...]:
        value = self._get(name)
        if value is _MISSING:
            return ()
        if not isinstance(value, list):
            raise self._fail(name, "a list of strings", value)
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise self._fail(f"{name}[{index}]", "a string", item)
        return tuple(value)


# Installing and applying ---------------------------------------------------------------

# Server-side apply: create when absent, update the fields this manager owns when present.
_APPLY_PATCH: Final = "application/apply-patch+yaml"
_POLL_INTERVAL_S: Final = 0.1  # seconds between two reads of a CRD's conditions


def load_crds(directory: Path = Path("crds")) -> list[dict[str, Any]]:
    """Every CustomResourceDefinition in ``directory/*.yaml``, in file name order."""
    crds = [
        document
        for path in sorted(directory.glob("*.yaml"))
        for document in _read_documents(path)
        if document.get("kind") == "CustomResourceDefinition"
    ]
    if not crds:
        raise PrerequisiteMissingError(
            f"no CustomResourceDefinition found in {directory}/*.yaml "
            f"(looked from {Path.cwd()}); pass the directory holding jobqueue's crds/"
        )
    return crds


def install_crds(
    api_client: kube_client.ApiClient,
    directory: Path = Path("crds"),
    *,
    timeout_s: float = 30.0,
) -> None:
    """Apply every CRD in ``directory`` and wait until the API server serves them all.

    Safe to repeat and to race: an existing CRD is updated in place by server-side apply.
    """
    extensions = kube_client.ApiextensionsV1Api(api_client)
    crds = load_crds(directory)
    names = [str(crd["metadata"]["name"]) for crd in crds]

    for name, crd in zip(names, crds, strict=True):
        with _kubernetes_errors(f"applying the CustomResourceDefinition {name}"):
            extensions.patch_custom_resource_definition(
                name, crd, field_manager=FIELD_MANAGER, force=True, _content_type=_APPLY_PATCH
            )

    # One deadline for all: they are established concurrently by the API server.
    deadline = time.monotonic() + timeout_s
    for name in names:
        _wait_until_established(extensions, name, deadline)
    logger.info("The CustomResourceDefinitions %s are established.", ", ".join(names))


def _wait_until_established(
    extensions: kube_client.ApiextensionsV1Api, name: str, deadline: float
) -> None:
    while True:
        with _kubernetes_errors(f"reading the CustomResourceDefinition {name}"):
            crd = extensions.read_custom_resource_definition(name)
        conditions = {
            condition.type: condition
            for condition in ((crd.status.conditions if crd.status else None) or [])
        }

        # A name clash with another CRD never resolves by waiting.
        names_accepted = conditions.get("NamesAccepted")
        if names_accepted is not None and names_accepted.status == "False":
            raise ConflictError(
                f"the CustomResourceDefinition {name} was refused: {names_accepted.message}"
            )
        established = conditions.get("Established")
        if established is not None and established.status == "True":
            return
        if time.monotonic() >= deadline:
            raise UnavailableError(f"the CustomResourceDefinition {name} is not established yet")
        time.sleep(_POLL_INTERVAL_S)


def apply_resource(
    api_client: kube_client.ApiClient,
    manifest: Mapping[str, Any],
    *,
    namespace: str | None = None,
) -> dict[str, Any]:
    """Create or update a JobQueue or QueueWorkerPool by server-side apply.

    ``namespace`` wins over the manifest's own; the stored object is returned, defaults
    filled in by the API server.
    """
    kind = manifest.get("kind")
    plural = PLURALS.get(kind) if isinstance(kind, str) else None
    if manifest.get("apiVersion") != API_VERSION or plural is None:
        raise InvalidInputError(
            f"apiVersion/kind: must be {API_VERSION} {' or '.join(PLURALS)}, "
            f"got {manifest.get('apiVersion')!r} {kind!r}"
        )
    metadata = manifest.get("metadata") or {}
    name = metadata.get("name")
    namespace = namespace or metadata.get("namespace")
    if not name or not namespace:
        raise InvalidInputError("metadata.name and a namespace are required to apply a resource")

    # The generated client decodes only HTTP 200 answers to PATCH, but an apply that
    # creates the object answers 201; so the raw answer is read and decoded here.
    body = {**manifest, "metadata": {**metadata, "namespace": namespace}}
    with _kubernetes_errors(f"applying the {kind} {namespace}/{name}"):
        answer = kube_client.CustomObjectsApi(api_client).patch_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name, body,
            field_manager=FIELD_MANAGER, force=True,
            _content_type=_APPLY_PATCH, _preload_content=False,
        )  # fmt: skip
        stored = json.loads(cast(urllib3.BaseHTTPResponse, answer).data)
    return cast(dict[str, Any], stored)


# The other kinds jobqueue writes, with the path of their collection; namespaced ones have
# a {namespace} to fill in.
_COLLECTIONS: Final[Mapping[tuple[str, str], str]] = MappingProxyType(
    {
        ("v1", "ConfigMap"): "/api/v1/namespaces/{namespace}/configmaps",
        ("apps/v1", "Deployment"): "/apis/apps/v1/namespaces/{namespace}/deployments",
        ("autoscaling/v2", "HorizontalPodAutoscaler"): (
            "/apis/autoscaling/v2/namespaces/{namespace}/horizontalpodautoscalers"
        ),
        ("kopf.dev/v1", "ClusterKopfPeering"): "/apis/kopf.dev/v1/clusterkopfpeerings",
    }
)


def _object_path(api_version: str, kind: str, name: str, namespace: str | None) -> str:
    collection = _COLLECTIONS.get((api_version, kind))
    if collection is None:
        raise InvalidInputError(f"apiVersion/kind: jobqueue does not write {api_version} {kind}")
    if "{namespace}" in collection and not namespace:
        raise InvalidInputError(f"metadata.namespace: a {kind} needs one")
    return f"{collection.format(namespace=namespace)}/{name}"


def _request(
    api_client: kube_client.ApiClient,
    method: str,
    path: str,
    *,
    body: Mapping[str, Any] | None = None,
    query: list[tuple[str, str]] | None = None,
    content_type: str = "application/json",
) -> dict[str, Any]:
    """One call to the API server, its JSON answer decoded; HTTP errors raised as ApiException.

    The generated client decodes only the status codes its OpenAPI names (an apply that
    creates answers 201 where PATCH documents 200), so the answer is read here.
    """
    serialized = api_client.param_serialize(
        method=method,
        resource_path=path,
        query_params=query or [],
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        body=dict(body) if body is not None else None,
        auth_settings=["BearerToken"],
    )
    response = api_client.call_api(*serialized)
    data = response.read()
    if not 200 <= response.status < 300:
        raise kube_client.ApiException(
            status=response.status, reason=response.reason, body=data.decode(errors="replace")
        )
    return cast(dict[str, Any], json.loads(data or b"{}"))


def apply_object(api_client: kube_client.ApiClient, manifest: Mapping[str, Any]) -> dict[str, Any]:
    """Create or update a Deployment, HPA or peering object by server-side apply."""
    metadata = manifest.get("metadata") or {}
    api_version, kind = str(manifest.get("apiVersion")), str(manifest.get("kind"))
    name, namespace = str(metadata.get("name") or ""), metadata.get("namespace")
    path = _object_path(api_version, kind, name, namespace)
    where = f"{namespace}/{name}" if namespace else name
    with _kubernetes_errors(f"applying the {kind} {where}"):
        return _request(
            api_client,
            "PATCH",
            path,
            body=manifest,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type=_APPLY_PATCH,
        )


def delete_object(
    api_client: kube_client.ApiClient,
    api_version: str,
    kind: str,
    name: str,
    namespace: str | None = None,
) -> bool:
    """Delete an object jobqueue wrote; False when it was not there."""
    path = _object_path(api_version, kind, name, namespace)
    try:
        with _kubernetes_errors(f"deleting the {kind} {namespace}/{name}"):
            _request(api_client, "DELETE", path)
    except NotFoundError:
        return False
    return True


def kube_configuration() -> kube_client.Configuration:
    """Fresh credentials: the pod's ServiceAccount, else the kubeconfig ``$KUBECONFIG`` names.

    Read anew on every call, so a rotated ServiceAccount token is picked up; the variable
    is read at call time too (the client library reads it once, at import).
    """
    configuration = kube_client.Configuration()
    try:
        kube_config.load_incluster_config(client_configuration=configuration)
    except kube_config.ConfigException:
        kubeconfig = os.environ.get("KUBECONFIG", "~/.kube/config").split(os.pathsep)[0]
        try:
            kube_config.load_kube_config(
                config_file=os.path.expanduser(kubeconfig), client_configuration=configuration
            )
        except (kube_config.ConfigException, OSError) as error:
            raise PrerequisiteMissingError(
                f"no Kubernetes credentials: not in a pod, and no usable kubeconfig at "
                f"{kubeconfig} (set $KUBECONFIG): {error}"
            ) from error
    return configuration


def api_client_from_environment() -> kube_client.ApiClient:
    """A client for the cluster this process runs in, else the one ``$KUBECONFIG`` names."""
    return kube_client.ApiClient(kube_configuration())


def _read_documents(path: Path) -> Iterator[dict[str, Any]]:
    try:
        documents = list(yaml.safe_load_all(path.read_text()))
    except OSError as error:
        raise PrerequisiteMissingError(f"cannot read {path}: {error}") from error
    except yaml.YAMLError as error:
        raise InvalidInputError(f"{path} is not valid YAML: {error}") from error
    for document in documents:
        if isinstance(document, dict):
            yield document


@contextlib.contextmanager
def _kubernetes_errors(action: str) -> Iterator[None]:
    """Turn the Kubernetes client's errors into the project's own, naming the action."""
    try:
        yield
    except kube_client.ApiException as error:
        raise _api_error(action, error) from error
    except urllib3.exceptions.HTTPError as error:
        raise UnavailableError(f"{action}: the Kubernetes API server is unreachable") from error


def _api_error(action: str, error: kube_client.ApiException) -> JobQueueError:
    message = f"{action}: {_status_message(error)}"
    status = error.status or 0
    if status in (400, 422):
        return InvalidInputError(message)
    if status == 401:
        return UnauthenticatedError(message)
    if status == 403:
        return PermissionDeniedError(message)
    if status == 404:
        return NotFoundError(message)
    if status == 409:
        return ConflictError(message)
    return UnavailableError(message, retry_after_s=1.0)


def _status_message(error: kube_client.ApiException) -> str:
    """The API server's own sentence from its Status body, else the HTTP reason."""
    try:
        status = json.loads(error.body or "")
    except ValueError:
        status = None
    if isinstance(status, dict) and status.get("message"):
        return str(status["message"])
    return f"HTTP {error.status} {error.reason}"
