"""The Helm chart as Helm renders it: lint, the schema's refusals, and what each object says.

Everything goes through the real ``helm`` binary (``helm lint`` and ``helm template``), so a
template error, a schema refusal or a rendering surprise shows here as it would at install.
Installation into a real API server, and what the rendered RBAC then allows, are in
``tests/integration/deploy/test_helm_install.py``.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml

from jobqueue import config as jobqueue_config
from tests.deploy_helpers import (
    CHART,
    CRDS,
    FULL_VALUES,
    OPERATOR_PERMISSIONS,
    helm,
    only,
    permissions,
    render,
)


@pytest.fixture(scope="module")
def default_documents() -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def full_documents() -> list[dict[str, Any]]:
    return render(FULL_VALUES)


def _write_values(tmp_path: Path, values: dict[str, Any]) -> Path:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


# Lint and render --------------------------------------------------------------------------


# Ways to serve the gRPC API, as --set assignments: the default (a Secret mounted), a
# cert-manager Certificate issuing that Secret, and plaintext for local development.
TLS_MODES = {
    "tls-secret": [],
    "cert-manager": ["tls.certManager.enabled=true", "tls.certManager.issuerRef.name=ca"],
    "plaintext": ["config.operator.tls.insecure_plaintext=true"],
}


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["default-values", "full-values"])
def test_chart_passes_strict_lint(values: Path | None) -> None:
    arguments = ["lint", "--strict", str(CHART)] + (["--values", str(values)] if values else [])

    result = helm(*arguments)

    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


@pytest.mark.parametrize("mode", TLS_MODES)
def test_chart_passes_strict_lint_in_every_tls_mode(mode: str) -> None:
    sets = [argument for assignment in TLS_MODES[mode] for argument in ("--set", assignment)]

    result = helm("lint", "--strict", str(CHART), *sets)

    assert "1 chart(s) linted, 0 chart(s) failed" in result.stdout


def test_default_values_render_the_operator_and_nothing_optional(
    default_documents: list[dict[str, Any]],
) -> None:
    kinds = sorted(document["kind"] for document in default_documents)

    assert kinds == sorted(
        ["CustomResourceDefinition"] * 3
        + ["ClusterRole", "ClusterRoleBinding", "ConfigMap"]
        + ["Deployment", "PodDisruptionBudget", "Service", "ServiceAccount"]
    )


def test_full_values_render_every_optional_object(full_documents: list[dict[str, Any]]) -> None:
    assert only(full_documents, "ServiceMonitor")["metadata"]["labels"]["release"] == "prometheus"
    assert only(full_documents, "PrometheusRule")["metadata"]["name"] == "jq"
    assert only(full_documents, "ConfigMap", "jq-dashboard")["data"]["jobqueue.json"]
    workers = [
        document["metadata"]["namespace"]
        for document in full_documents
        if document["kind"] == "ServiceAccount"
        and document["metadata"]["name"] == "jobqueue-worker"
    ]
    assert sorted(workers) == ["team-a", "team-b"]
    assert only(full_documents, "Service")["spec"]["type"] == "LoadBalancer"
    assert only(full_documents, "Deployment")["spec"]["replicas"] == 3
    assert only(full_documents, "Certificate")["spec"]["secretName"] == "jobqueue-grpc-tls"


# The schema refuses bad values ------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "field", "complaint"),
    [
        ({"replicas": "two"}, "/replicas", "want integer"),
        ({"replica": 2}, "additional properties 'replica' not allowed", ""),
        ({"image": {"repository": None}}, "/image", "missing property 'repository'"),
        ({"image": {"repository": ""}}, "/image/repository", "minLength"),
        ({"config": {"database": {"password": "hunter2"}}}, "/config/database", "'password'"),
        ({"config": {"operator": {"grpc_address": ":1"}}}, "/config/operator", "grpc_address"),
        ({"config": {"logging": {"level": "LOUD"}}}, "/config/logging/level", "must be one of"),
        ({"config": {"operator": {"auth": {"mode": "open"}}}}, "/config/operator/auth/mode", ""),
        ({"config": {"operator": {"auth": {"cache_size": 0}}}}, "/auth/cache_size", "minimum"),
        ({"config": {"operator": {"tls": {"cert_file": "/c"}}}}, "/operator/tls", "cert_file"),
        ({"ports": {"grpc": 70000}}, "/ports/grpc", "maximum"),
        ({"service": {"type": "Internal"}}, "/service/type", "'ClusterIP', 'NodePort'"),
        ({"podDisruptionBudget": {"maxUnavailable": "half"}}, "/podDisruptionBudget", ""),
    ],
)
@pytest.mark.parametrize("command", ["template", "lint"])
def test_bad_values_are_refused_naming_the_field(
    tmp_path: Path, command: str, values: dict[str, Any], field: str, complaint: str
) -> None:
    path = _write_values(tmp_path, values)
    arguments = [command, str(CHART), "--values", str(path)]
    if command == "template":
        arguments.insert(1, "jq")

    result = helm(*arguments, check=False)

    message = result.stdout + result.stderr
    assert result.returncode != 0, message
    assert "schema" in message or "values.yaml" in message, message
    assert field in message, message
    assert complaint in message, message


def test_standalone_operator_must_run_alone(tmp_path: Path) -> None:
    path = _write_values(tmp_path, {"replicas": 2, "config": {"operator": {"standalone": True}}})

    result = helm("template", "jq", str(CHART), "--values", str(path), check=False)

    assert result.returncode != 0
    assert "config.operator.standalone" in result.stderr
    assert "replicas: 1" in result.stderr


def test_existing_service_account_must_be_named(tmp_path: Path) -> None:
    path = _write_values(tmp_path, {"serviceAccount": {"create": False}})

    result = helm("template", "jq", str(CHART), "--values", str(path), check=False)

    assert result.returncode != 0
    assert "serviceAccount.name: must name an existing ServiceAccount" in result.stderr


# The operator's Deployment ----------------------------------------------------------------


def _operator_container(documents: list[dict[str, Any]]) -> dict[str, Any]:
    (container,) = only(documents, "Deployment")["spec"]["template"]["spec"]["containers"]
    return typing.cast(dict[str, Any], container)


def _settings_file(documents: list[dict[str, Any]]) -> str:
    """The settings file the operator's pods mount, found through the Deployment's volume."""
    volumes = only(documents, "Deployment")["spec"]["template"]["spec"]["volumes"]
    name = next(volume["configMap"]["name"] for volume in volumes if volume["name"] == "config")
    return str(only(documents, "ConfigMap", name)["data"]["config.yaml"])


def test_operator_runs_locked_down(default_documents: list[dict[str, Any]]) -> None:
    pod = only(default_documents, "Deployment")["spec"]["template"]["spec"]
    container = _operator_container(default_documents)

    assert container["securityContext"] == {
        "runAsNonRoot": True,
        "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["securityContext"]["runAsNonRoot"] is True
    # The image's numeric USER (see the Dockerfile) is the one the pod asks for.
    assert pod["securityContext"]["runAsUser"] == 10001
    assert "USER 10001:10001" in (CHART.parents[1] / "Dockerfile").read_text()
    # A read-only root still needs somewhere to write scratch files.
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    assert mounts["tmp"] == "/tmp"
    assert {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}} in pod["volumes"]


def test_operator_ports_probes_and_service_agree(full_documents: list[dict[str, Any]]) -> None:
    container = _operator_container(full_documents)
    service = only(full_documents, "Service")

    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports == {"grpc": 7443, "http": 9443}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert {(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]} == {
        ("grpc", 7443, "grpc"),
        ("metrics", 9443, "http"),
    }
    selector = only(full_documents, "Deployment")["spec"]["selector"]["matchLabels"]
    assert service["spec"]["selector"] == selector


def test_default_ports_are_grpc_7070_and_http_9090(default_documents: list[dict[str, Any]]) -> None:
    ports = {p["name"]: p["containerPort"] for p in _operator_container(default_documents)["ports"]}

    assert ports == {"grpc": 7070, "http": 9090}


def test_operator_knows_its_pod_name_and_settings_file(
    default_documents: list[dict[str, Any]],
) -> None:
    container = _operator_container(default_documents)
    env = {variable["name"]: variable for variable in container["env"]}

    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["JQ_CONFIG"]["value"] == "/etc/jobqueue/config.yaml"
    mount = next(m for m in container["volumeMounts"] if m["name"] == "config")
    assert mount == {"name": "config", "mountPath": "/etc/jobqueue", "readOnly": True}
    assert yaml.safe_load(_settings_file(default_documents))["database"]["url"]
    # No password Secret is named by default, so no password variable is set.
    assert not [name for name in env if name.endswith("PASSWORD")]


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["default-values", "full-values"])
def test_settings_file_and_env_load_as_jobqueue_settings(
    tmp_path: Path, values: Path | None
) -> None:
    documents = render(*([values] if values else []))
    container = _operator_container(documents)
    settings_path = tmp_path / "config.yaml"
    settings_path.write_text(_settings_file(documents))

    # The container's environment as the kubelet would build it, each Secret's value faked.
    environ = {}
    for variable in container["env"]:
        if "value" in variable:
            environ[variable["name"]] = variable["value"]
        elif "secretKeyRef" in variable.get("valueFrom", {}):
            reference = variable["valueFrom"]["secretKeyRef"]
            environ[variable["name"]] = f"{reference['name']}/{reference['key']}"
    environ["JQ_CONFIG"] = str(settings_path)
    settings = jobqueue_config.load_settings(environ=environ)

    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    # The certificate is served from the mounted Secret.
    tls_mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "tls")
    assert settings.operator.tls.cert_file == f"{tls_mount}/tls.crt"
    assert settings.operator.tls.key_file == f"{tls_mount}/tls.key"
    assert settings.operator.grpc_address == f"0.0.0.0:{ports['grpc']}"
    assert settings.operator.http_address == f"0.0.0.0:{ports['http']}"
    assert settings.database.url
    # Worker pods are pointed at this release's Service, on its gRPC port.
    service = only(documents, "Service")["metadata"]["name"]
    assert settings.operator.service_address == f"{service}.jobqueue.svc:{ports['grpc']}"
    if values is None:
        assert settings.database.password is None
        assert settings.logging.format == "json"
    else:
        assert settings.database.password == "jobqueue-postgres/password"
        assert settings.redis.password == "jobqueue-redis/redis-password"
        assert settings.kafka.sasl_password == "jobqueue-kafka/sasl-password"
        assert settings.kafka.security_protocol == "SASL_SSL"
        assert settings.operator.lease_s == 60
        assert settings.operator.auth.audiences == "jobqueue"
        assert settings.operator.auth.mode == "kubernetes"
        assert settings.redis.username == "jobqueue"
        assert settings.database.ssl_root_cert == "/etc/jobqueue/ca/ca.crt"


# TLS of the gRPC API ---------------------------------------------------------------------


def _pod_spec(documents: list[dict[str, Any]]) -> dict[str, Any]:
    return dict(only(documents, "Deployment")["spec"]["template"]["spec"])


def _load_settings_file(documents: list[dict[str, Any]], tmp_path: Path) -> Any:
    path = tmp_path / "config.yaml"
    path.write_text(_settings_file(documents))
    return jobqueue_config.load_settings(path, environ={})


def test_certificate_secret_is_mounted_as_a_directory(
    default_documents: list[dict[str, Any]], tmp_path: Path
) -> None:
    pod = _pod_spec(default_documents)
    container = _operator_container(default_documents)

    assert {
        "name": "tls",
        "secret": {"secretName": "jq-jobqueue-tls", "defaultMode": 0o440},
    } in pod["volumes"]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == "tls"]
    # No subPath: the kubelet's in-place update of a renewed Secret must reach the pod.
    assert mount == {"name": "tls", "mountPath": "/etc/jobqueue/tls", "readOnly": True}
    settings = _load_settings_file(default_documents, tmp_path)
    assert settings.operator.tls.cert_file == "/etc/jobqueue/tls/tls.crt"
    assert settings.operator.tls.key_file == "/etc/jobqueue/tls/tls.key"
    assert settings.operator.tls.insecure_plaintext is False
    assert settings.operator.auth.mode == "kubernetes"
    assert not [v for v in container["env"] if v["name"] == "JQ_OPERATOR_WORKER_CA_CONFIGMAP"]


def test_certificate_secret_name_is_a_value() -> None:
    documents = render(sets=["tls.secretName=operator-cert"])

    volumes = {volume["name"]: volume for volume in _pod_spec(documents)["volumes"]}
    assert volumes["tls"]["secret"]["secretName"] == "operator-cert"


@pytest.mark.parametrize("mode", TLS_MODES)
def test_settings_load_in_every_tls_mode(mode: str, tmp_path: Path) -> None:
    documents = render(sets=TLS_MODES[mode])

    settings = _load_settings_file(documents, tmp_path)

    volumes = {volume["name"] for volume in _pod_spec(documents)["volumes"]}
    mounts = {mount["name"] for mount in _operator_container(documents)["volumeMounts"]}
    # Plaintext mounts no certificate, so no Secret has to exist for it.
    assert ("tls" in volumes) is ("tls" in mounts) is (mode != "plaintext")
    assert settings.operator.tls.insecure_plaintext is (mode == "plaintext")
    assert bool(settings.operator.tls.cert_file) is (mode != "plaintext")
    kinds = {document["kind"] for document in documents}
    assert ("Certificate" in kinds) is (mode == "cert-manager")


def test_cert_manager_certificate_fills_the_mounted_secret(tmp_path: Path) -> None:
    documents = render(FULL_VALUES)
    certificate = only(documents, "Certificate")
    volumes = {volume["name"]: volume for volume in _pod_spec(documents)["volumes"]}
    settings = _load_settings_file(documents, tmp_path)

    assert certificate["apiVersion"] == "cert-manager.io/v1"
    assert certificate["spec"]["secretName"] == volumes["tls"]["secret"]["secretName"]
    assert certificate["spec"]["issuerRef"] == {
        "name": "platform-ca",
        "kind": "ClusterIssuer",
        "group": "cert-manager.io",
    }
    assert certificate["spec"]["usages"] == ["server auth", "digital signature"]
    assert (certificate["spec"]["duration"], certificate["spec"]["renewBefore"]) == (
        "720h",
        "240h",
    )
    # Every name a pod may dial the Service by, and the host workers are given.
    service = only(documents, "Service")["metadata"]["name"]
    names = certificate["spec"]["dnsNames"]
    assert names == [
        service,
        f"{service}.jobqueue",
        f"{service}.jobqueue.svc",
        f"{service}.jobqueue.svc.cluster.example",
        "jobqueue.example.com",
    ]
    assert settings.operator.service_address.rpartition(":")[0] in names


def test_cert_manager_certificate_names_a_custom_service_address() -> None:
    documents = render(
        sets=[
            *TLS_MODES["cert-manager"],
            "config.operator.service_address=jobqueue.platform.internal:443",
        ]
    )

    assert "jobqueue.platform.internal" in only(documents, "Certificate")["spec"]["dnsNames"]


def test_cert_manager_needs_an_issuer() -> None:
    result = helm(
        "template", "jq", str(CHART), "--set", "tls.certManager.enabled=true", check=False
    )

    assert result.returncode != 0
    assert "tls.certManager.issuerRef.name" in result.stderr


@pytest.mark.parametrize(
    "assignment",
    ["tls.certManager.enabled=true", "tls.caConfigMapName=jobqueue-ca"],
    ids=["cert-manager", "worker-ca"],
)
def test_plaintext_refuses_tls_values_it_would_ignore(assignment: str) -> None:
    setting = assignment.partition("=")[0]
    arguments = ["--set", "tls.certManager.issuerRef.name=ca", "--set", assignment]

    result = helm(
        "template", "jq", str(CHART), *arguments, "--set", TLS_MODES["plaintext"][0], check=False
    )

    assert result.returncode != 0
    assert setting in result.stderr
    assert "insecure_plaintext" in result.stderr


def test_worker_ca_config_map_name_reaches_the_operator(
    full_documents: list[dict[str, Any]],
) -> None:
    env = {variable["name"]: variable for variable in _operator_container(full_documents)["env"]}

    assert env["JQ_OPERATOR_WORKER_CA_CONFIGMAP"] == {
        "name": "JQ_OPERATOR_WORKER_CA_CONFIGMAP",
        "value": "jobqueue-ca",
    }


def test_changed_settings_roll_the_operator() -> None:
    def checksum(*sets: str) -> str:
        deployment = only(render(sets=sets), "Deployment")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    assert checksum() == checksum()
    assert checksum() != checksum("config.logging.level=DEBUG")


# Settings the chart writes itself: the listen addresses follow `ports`, the certificate
# files are where the `tls` Secret is mounted.
CHART_DERIVED_SETTINGS = frozenset(
    {
        "operator.grpc_address",
        "operator.http_address",
        "operator.tls.cert_file",
        "operator.tls.key_file",
        # From tls.caConfigMapName, as JQ_OPERATOR_WORKER_CA_CONFIGMAP.
        "operator.worker_ca_configmap",
        # Not offered: the operator would copy its CA into every pool's namespace, which
        # takes ConfigMap writes the chart's role does not grant; caConfigMapName instead.
        "operator.tls.ca_file",
    }
)


def _assert_schema_tracks(setting: str, section_type: Any, section_schema: dict[str, Any]) -> None:
    """One section's schema lists its settings (nested sections too), enums and minimums."""
    fields = {f.name: f for f in dataclasses.fields(section_type)}
    field_hints = typing.get_type_hints(section_type)
    # Secrets come from Secrets, and the chart's own settings from the chart.
    expected = {
        name
        for name, spec in fields.items()
        if not spec.metadata.get("secret") and f"{setting}.{name}" not in CHART_DERIVED_SETTINGS
    }
    assert set(section_schema["properties"]) == expected, setting
    assert section_schema["additionalProperties"] is False, setting
    for name, property_schema in section_schema["properties"].items():
        hint = field_hints[name]
        if dataclasses.is_dataclass(hint):
            _assert_schema_tracks(f"{setting}.{name}", hint, property_schema)
            continue
        literals = [a for a in get_args(hint) if typing.get_origin(a) is typing.Literal]
        if typing.get_origin(hint) is typing.Literal:
            literals = [hint]
        if literals:
            choices = {c for c in property_schema["enum"] if c is not None}
            assert choices == set(get_args(literals[0])), f"{setting}.{name}"
        minimum = fields[name].metadata.get("minimum")
        if minimum is not None:
            assert property_schema["minimum"] == minimum, f"{setting}.{name}"


def test_values_schema_config_tracks_jobqueue_settings() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    sections = schema["properties"]["config"]["properties"]
    hints = typing.get_type_hints(jobqueue_config.Settings)

    # Worker settings belong to worker pods, not to the operator's file.
    assert set(sections) == {f.name for f in dataclasses.fields(jobqueue_config.Settings)} - {
        "worker"
    }
    for section, section_schema in sections.items():
        _assert_schema_tracks(section, hints[section], section_schema)


def test_schema_tracking_reaches_nested_sections() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    operator = schema["properties"]["config"]["properties"]["operator"]
    del operator["properties"]["auth"]["properties"]["cache_size"]

    with pytest.raises(AssertionError, match=r"operator\.auth"):
        _assert_schema_tracks("operator", jobqueue_config.OperatorSettings, operator)


# RBAC -------------------------------------------------------------------------------------


def test_cluster_role_grants_exactly_what_the_operator_uses(
    default_documents: list[dict[str, Any]],
) -> None:
    role = only(default_documents, "ClusterRole")

    granted = permissions(role)

    assert granted == OPERATOR_PERMISSIONS, {
        "missing": sorted(OPERATOR_PERMISSIONS - granted),
        "extra": sorted(granted - OPERATOR_PERMISSIONS),
    }
    assert not any(resource == "secrets" for _, resource, _ in granted)


def test_binding_names_the_chart_service_account(full_documents: list[dict[str, Any]]) -> None:
    binding = only(full_documents, "ClusterRoleBinding")
    account = only(full_documents, "ServiceAccount", "jobqueue-operator")
    deployment = only(full_documents, "Deployment")

    assert binding["roleRef"]["name"] == only(full_documents, "ClusterRole")["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "jobqueue-operator", "namespace": "jobqueue"}
    ]
    assert account["metadata"]["annotations"] == {"iam.example.com/role": "jobqueue"}
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "jobqueue-operator"


def test_rbac_and_peering_can_be_left_to_someone_else() -> None:
    documents = render(sets=["rbac.create=false", "peering.create=false"])

    kinds = {document["kind"] for document in documents}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"}


# CRDs -------------------------------------------------------------------------------------


def test_chart_crds_are_the_repository_crds() -> None:
    repository = {path.name: path.read_bytes() for path in CRDS.glob("*.yaml")}
    chart = {path.name: path.read_bytes() for path in (CHART / "crds").glob("*.yaml")}

    assert repository, "no CRDs found in crds/"
    assert set(chart) == set(repository), "run `make sync-crds`"
    for name, content in repository.items():
        assert chart[name] == content, f"helm/jobqueue/crds/{name} differs: `make sync-crds`"


def test_peering_object_is_the_one_the_operator_peers_through() -> None:
    documents = render(sets=["peering.create=true"])
    peering = only(documents, "ClusterKopfPeering")
    crd = only(documents, "CustomResourceDefinition", "clusterkopfpeerings.kopf.dev")

    assert peering["apiVersion"] == "kopf.dev/v1"
    assert peering["metadata"]["name"] == "jobqueue"
    assert "namespace" not in peering["metadata"]
    assert crd["spec"]["scope"] == "Cluster"
