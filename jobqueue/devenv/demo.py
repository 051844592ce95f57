"""``make demo``: the whole system on the local environment, start to drain.

The tour, each step on the real servers:

1. install the CRDs; start ``jobqueue-operator`` as a process (kopf, gRPC, scheduler,
   outbox relay to Kafka), reconciling the ``demo`` namespace. Its gRPC API serves TLS
   with a certificate minted for the demo, which the workers and jqctl verify; token
   authentication is off (``operator.auth.mode: none``, and the operator says so in its
   log), because the local environment's admin identity is a client certificate, not a
   token (docs/security.md shows the real set-up);
2. apply ``manifests/examples/queue.yaml`` and ``pool.yaml``; the queue's retries are
   shortened and command jobs allowed, so failures dead-letter within the demo's
   minute rather than the example's quarter of an hour;
3. there is no kubelet here, so the pool's pods never run: the demo reads the worker
   arguments from the Deployment the operator wrote and starts that many
   ``jobqueue-worker`` processes with them, pointed at the local operator;
4. submit a batch of Python and command jobs, some of them failing, over gRPC;
5. print ``kubectl get jq,qwp`` as the numbers move, until nothing is left to run.

Then it says how to carry on by hand and, on Ctrl-C (at once when not on a terminal),
stops everything it started. Handlers the demo's workers run are at the end of the file.

This module starts the operator and the workers as programs and talks to them over gRPC
and the Kubernetes API; it imports neither (the layers point one way).
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client as kube_client
from kubernetes import config as kube_config

from jobqueue import resources
from jobqueue.client import Client, job_spec
from jobqueue.devenv.certificates import ServingCertificate, mint_serving_certificate
from jobqueue.devenv.environment import Environment
from jobqueue.devenv.processes import ManagedProcess, free_port, port_open
from jobqueue.errors import UnavailableError

NAMESPACE = "demo"
REPOSITORY = Path(__file__).resolve().parents[2]
EXAMPLES = REPOSITORY / "manifests" / "examples"
HANDLERS = "jobqueue.devenv.demo"
DRAIN_TIMEOUT_S = 180.0  # seconds the demo waits for the queue to drain
REFRESH_S = 2.0  # seconds between two looks at the resources


def run(environment: Environment, *, env_file: Path) -> None:
    """The tour; returns once everything it started is stopped again."""
    assert environment.endpoints.kubeconfig is not None
    kubeconfig = environment.endpoints.kubeconfig
    api = kube_config.new_client_from_config(config_file=str(kubeconfig))
    root = environment.root or Path(".")

    with api, contextlib.ExitStack() as stack:
        _step("Installing the CustomResourceDefinitions")
        resources.install_crds(api, REPOSITORY / "crds")
        _ensure_namespace(api)

        grpc_port = free_port()
        certificate = mint_serving_certificate(root / "grpc-tls")
        operator = _start_operator(environment, grpc_port, root, certificate)
        stack.callback(operator.stop)
        _step(f"Operator started (gRPC on 127.0.0.1:{grpc_port}, log {operator.log_path})")

        queue, pool = _apply_examples(api)
        _step(f"Applied JobQueue {queue} and QueueWorkerPool {pool} in namespace {NAMESPACE}")
        arguments, replicas = _worker_arguments(api, pool)
        for index in range(replicas):
            name = f"{pool}-{index}"
            worker = _start_worker(
                environment,
                arguments,
                grpc_port=grpc_port,
                name=name,
                certificate=certificate,
                root=root,
            )
            stack.callback(worker.stop)
        _step(f"Started {replicas} workers as local processes with the Deployment's arguments")

        address = f"127.0.0.1:{grpc_port}"
        with Client(address, ca_file=certificate.ca_path, timeout_s=10) as client:
            submitted = client.submit_batch(_jobs(queue))
        _step(f"Submitted {len(submitted)} jobs (some fail on purpose, then retry)")

        _watch_until_drained(environment, queue)
        if not sys.stdin.isatty():
            _step("The queue has drained. (Run make demo in a terminal to keep it up.)")
            return
        env_file.write_text(_exports(environment, grpc_port, certificate))
        try:
            _print_next_steps(env_file, grpc_port, submitted[0].id)
            with contextlib.suppress(KeyboardInterrupt):
                signal.pause()
        finally:
            env_file.unlink(missing_ok=True)


def _step(message: str) -> None:
    print(f"==> {message}", flush=True)


def _ensure_namespace(api: kube_client.ApiClient) -> None:
    core = kube_client.CoreV1Api(api)
    body = kube_client.V1Namespace(metadata=kube_client.V1ObjectMeta(name=NAMESPACE))
    try:
        core.create_namespace(body)
    except kube_client.ApiException as error:
        if error.status != 409:  # already there: fine
            raise


def _child_environment(environment: Environment, **more: str) -> dict[str, str]:
    variables = {**os.environ, **environment.endpoints.as_environment(), **more}
    variables["PYTHONPATH"] = str(REPOSITORY)
    return variables


def _start_operator(
    environment: Environment, grpc_port: int, root: Path, certificate: ServingCertificate
) -> ManagedProcess:
    http_port = free_port()
    variables = _child_environment(
        environment,
        JQ_OPERATOR_TLS_CERT_FILE=str(certificate.cert_path),
        JQ_OPERATOR_TLS_KEY_FILE=str(certificate.key_path),
        JQ_OPERATOR_AUTH_MODE="none",
        JQ_OPERATOR_GRPC_ADDRESS=f"127.0.0.1:{grpc_port}",
        JQ_OPERATOR_HTTP_ADDRESS=f"127.0.0.1:{http_port}",
        JQ_OPERATOR_SERVICE_ADDRESS=f"127.0.0.1:{grpc_port}",
        JQ_OPERATOR_NAMESPACES=NAMESPACE,
        JQ_OPERATOR_STANDALONE="true",
        JQ_OPERATOR_STATUS_INTERVAL_S="1",
        JQ_OPERATOR_LEASE_S="10",
        JQ_LOGGING_FORMAT="text",
    )
    process = ManagedProcess(
        "jobqueue-operator",
        [sys.executable, "-m", "jobqueue.operator.main"],
        log_path=root / "operator.log",
        env=variables,
        cwd=REPOSITORY,
    )
    process.start()
    process.wait_ready(lambda: port_open(grpc_port), timeout_s=60, what="serving gRPC")
    return process


def _apply_examples(api: kube_client.ApiClient) -> tuple[str, str]:
    queue = yaml.safe_load((EXAMPLES / "queue.yaml").read_text())
    queue["spec"].update(
        maxAttempts=3,
        backoff={"initialSeconds": 1, "multiplier": 2, "maxSeconds": 4},
        allowedKinds=["Command", "Python"],
    )
    queue["spec"].pop("rateLimit", None)
    pool = yaml.safe_load((EXAMPLES / "pool.yaml").read_text())
    resources.apply_resource(api, queue, namespace=NAMESPACE)
    resources.apply_resource(api, pool, namespace=NAMESPACE)
    return str(queue["metadata"]["name"]), str(pool["metadata"]["name"])


def _worker_arguments(api: kube_client.ApiClient, pool: str) -> tuple[list[str], int]:
    """The worker container's arguments and the replica count, once the Deployment exists."""
    apps = kube_client.AppsV1Api(api)
    deadline = time.monotonic() + 60
    while True:
        try:
            deployment = apps.read_namespaced_deployment(pool, NAMESPACE)
            break
        except kube_client.ApiException as error:
            if error.status != 404 or time.monotonic() > deadline:
                raise UnavailableError(f"the operator wrote no Deployment for {pool}") from error
            time.sleep(0.2)
    (container,) = deployment.spec.template.spec.containers
    return list(container.args), int(deployment.spec.replicas or 0)


def _start_worker(
    environment: Environment,
    arguments: list[str],
    *,
    grpc_port: int,
    name: str,
    certificate: ServingCertificate,
    root: Path,
) -> ManagedProcess:
    # The Deployment names the operator's Service; here the operator is on loopback.
    local = list(arguments)
    local[local.index("--operator") + 1] = f"127.0.0.1:{grpc_port}"
    handlers = [f"--handler={HANDLERS}:{handler}" for handler in ("send_email", "flaky_email")]
    process = ManagedProcess(
        name,
        [
            sys.executable,
            "-m",
            "jobqueue.worker.main",
            *local,
            *handlers,
            "--worker-id",
            name,
            "--http-address",
            "",
            "--log-format",
            "text",
        ],
        log_path=root / f"{name}.log",
        env=_child_environment(
            environment,
            JQ_WORKER_DRAIN_GRACE_S="5",
            JQ_WORKER_TLS_CA_FILE=str(certificate.ca_path),
        ),
        cwd=REPOSITORY,
    )
    process.start()
    return process


def _jobs(queue: str) -> list[Any]:
    rng = random.Random(7)  # the same batch on every run
    jobs = [
        job_spec(
            queue,
            handler=f"{HANDLERS}:send_email",
            arguments={"to": f"user{n}@example.com", "seconds": rng.uniform(0.2, 1.5)},
        )
        for n in range(40)
    ]
    jobs += [
        job_spec(queue, handler=f"{HANDLERS}:flaky_email", arguments={"to": f"bounce{n}@example"})
        for n in range(4)
    ]
    jobs += [
        job_spec(queue, command=[sys.executable, "-c", "import time; time.sleep(1); print('ok')"])
        for _ in range(10)
    ]
    jobs += [
        job_spec(queue, command=[sys.executable, "-c", "import sys; sys.exit('disk full')"])
        for _ in range(2)
    ]
    return jobs


def _watch_until_drained(environment: Environment, queue: str) -> None:
    """Print the resources every few seconds until the queue has nothing left to run."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while True:
        if _drained(environment, queue):
            # The last table is read after the drain was seen, so it shows the end state.
            print(_kubectl(environment, "get", "jq,qwp", "-o", "wide"), flush=True)
            return
        print(_kubectl(environment, "get", "jq,qwp", "-o", "wide"), flush=True)
        if time.monotonic() > deadline:
            raise UnavailableError(f"queue {queue} did not drain within {DRAIN_TIMEOUT_S:g} s")
        time.sleep(REFRESH_S)


def _drained(environment: Environment, queue: str) -> bool:
    counts = yaml.safe_load(
        _kubectl(environment, "get", "jq", queue, "-o", "jsonpath={.status.jobs}") or "{}"
    )
    if not counts:
        return False
    unfinished = sum(counts.get(key, 0) for key in ("pending", "assigned", "running", "failed"))
    return bool(unfinished == 0 and counts.get("succeeded", 0) > 0)


def _kubectl(environment: Environment, *arguments: str) -> str:
    assert environment.endpoints.kube_bin_dir is not None
    command = [
        str(environment.endpoints.kube_bin_dir / "kubectl"),
        "--kubeconfig", str(environment.endpoints.kubeconfig), "-n", NAMESPACE, *arguments,
    ]  # fmt: skip
    completed = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    return completed.stdout if completed.returncode == 0 else completed.stderr


def _exports(environment: Environment, grpc_port: int, certificate: ServingCertificate) -> str:
    lines = [
        f"export {name}={value}" for name, value in environment.endpoints.as_environment().items()
    ]
    lines.append(f"export JQ_SERVER=127.0.0.1:{grpc_port}")
    lines.append(f"export JQ_CA_FILE={certificate.ca_path}")
    if environment.endpoints.kube_bin_dir:
        lines.append(f'export PATH={environment.endpoints.kube_bin_dir}:"$PATH"')
    return "\n".join(lines) + "\n"


def _print_next_steps(env_file: Path, grpc_port: int, job_id: str) -> None:
    print(
        f"""
The queue has drained. Everything stays up until Ctrl-C; in another shell:

  source {env_file}    # KUBECONFIG, kubectl on PATH, JQ_SERVER and JQ_CA_FILE for jqctl
  kubectl get jobqueue-all -n {NAMESPACE}
  kubectl describe jq emails -n {NAMESPACE}
  .venv/bin/jqctl queue stats emails
  .venv/bin/jqctl job list --queue emails --state dead_lettered
  .venv/bin/jqctl job events {job_id}
""",
        flush=True,
    )


# The demo's job handlers, run by its workers ----------------------------------------------


def send_email(to: str, seconds: float = 0.5) -> dict[str, str]:
    """Pretend to send an e-mail: it takes a moment, then says where it went."""
    time.sleep(seconds)
    return {"sent_to": to}


def flaky_email(to: str) -> None:
    """An address that always bounces: the job retries, then is dead-lettered."""
    raise ConnectionRefusedError(f"mail server refused {to}")
