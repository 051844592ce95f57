"""Kubernetes identities for the security tests: ServiceAccounts, grants, tokens, pods.

Everything is made in the test's own namespace through the admin client, the way a
platform team would set up access, and tokens come from the TokenRequest API, as the
kubelet gets them for pods. Cluster-scoped grants are remembered and removed by
``cleanup``, since deleting the namespace does not remove them.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field

from kubernetes import client as kube_client

from jobqueue import resources
from jobqueue.operator.workloads import POOL_LABEL, QUEUE_LABEL

# The shortest lifetime the TokenRequest API grants, in seconds.
TOKEN_LIFETIME_S = 600


@dataclass(frozen=True)
class Pod:
    name: str
    uid: str


@dataclass
class Cluster:
    api: kube_client.ApiClient
    namespace: str
    _cluster_objects: list[tuple[str, str]] = field(default_factory=list)

    @property
    def core(self) -> kube_client.CoreV1Api:
        return kube_client.CoreV1Api(self.api)

    @property
    def rbac(self) -> kube_client.RbacAuthorizationV1Api:
        return kube_client.RbacAuthorizationV1Api(self.api)

    def username(self, account: str) -> str:
        return f"system:serviceaccount:{self.namespace}:{account}"

    def service_account(self, name: str) -> str:
        body = kube_client.V1ServiceAccount(metadata=kube_client.V1ObjectMeta(name=name))
        self.core.create_namespaced_service_account(self.namespace, body)
        return name

    def delete_service_account(self, name: str) -> None:
        self.core.delete_namespaced_service_account(name, self.namespace)

    def _rule(self, verbs: Sequence[str], queues: Sequence[str] | None) -> kube_client.V1PolicyRule:
        return kube_client.V1PolicyRule(
            api_groups=[resources.GROUP],
            resources=["jobqueues/jobs"],
            verbs=list(verbs),
            resource_names=list(queues) if queues else None,
        )

    def _subject(self, account: str) -> kube_client.RbacV1Subject:
        return kube_client.RbacV1Subject(
            kind="ServiceAccount", name=account, namespace=self.namespace
        )

    def grant(self, account: str, verbs: Sequence[str], queues: Sequence[str] | None) -> str:
        """A Role with ``verbs`` on the jobs of ``queues`` (all when None), bound to ``account``."""
        name = f"{account}-{uuid.uuid4().hex[:6]}"
        self.rbac.create_namespaced_role(
            self.namespace,
            kube_client.V1Role(
                metadata=kube_client.V1ObjectMeta(name=name), rules=[self._rule(verbs, queues)]
            ),
        )
        self.rbac.create_namespaced_role_binding(
            self.namespace,
            kube_client.V1RoleBinding(
                metadata=kube_client.V1ObjectMeta(name=name),
                role_ref=kube_client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="Role", name=name
                ),
                subjects=[self._subject(account)],
            ),
        )
        return name

    def revoke(self, binding: str) -> None:
        self.rbac.delete_namespaced_role_binding(binding, self.namespace)

    def grant_cluster_wide(self, account: str, verbs: Sequence[str]) -> str:
        name = f"{self.namespace}-{account}-{uuid.uuid4().hex[:6]}"
        self.rbac.create_cluster_role(
            kube_client.V1ClusterRole(
                metadata=kube_client.V1ObjectMeta(name=name), rules=[self._rule(verbs, None)]
            )
        )
        self._cluster_objects.append(("ClusterRole", name))
        self.rbac.create_cluster_role_binding(
            kube_client.V1ClusterRoleBinding(
                metadata=kube_client.V1ObjectMeta(name=name),
                role_ref=kube_client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="ClusterRole", name=name
                ),
                subjects=[self._subject(account)],
            )
        )
        self._cluster_objects.append(("ClusterRoleBinding", name))
        return name

    def token(
        self, account: str, *, audiences: Sequence[str] | None = None, pod: Pod | None = None
    ) -> str:
        """A token from the TokenRequest API, bound to ``pod`` when one is given."""
        bound = (
            kube_client.V1BoundObjectReference(
                api_version="v1", kind="Pod", name=pod.name, uid=pod.uid
            )
            if pod
            else None
        )
        request = kube_client.AuthenticationV1TokenRequest(
            spec=kube_client.V1TokenRequestSpec(
                audiences=list(audiences) if audiences else [],
                expiration_seconds=TOKEN_LIFETIME_S,
                bound_object_ref=bound,
            )
        )
        answer = self.core.create_namespaced_service_account_token(account, self.namespace, request)
        token: str = answer.status.token
        return token

    def worker_pod(self, name: str, *, account: str, pool: str, queue: str) -> Pod:
        """A pod as a pool's Deployment makes it (no kubelet runs it; its token is real)."""
        body = kube_client.V1Pod(
            metadata=kube_client.V1ObjectMeta(
                name=name, labels={POOL_LABEL: pool, QUEUE_LABEL: queue}
            ),
            spec=kube_client.V1PodSpec(
                service_account_name=account,
                containers=[kube_client.V1Container(name="worker", image="jobqueue/worker")],
            ),
        )
        created = self.core.create_namespaced_pod(self.namespace, body)
        return Pod(name, created.metadata.uid)

    def worker_pool(self, name: str, *, queue: str) -> None:
        """A QueueWorkerPool resource (no operator reconciles it in these tests)."""
        kube_client.CustomObjectsApi(self.api).create_namespaced_custom_object(
            resources.GROUP,
            resources.VERSION,
            self.namespace,
            resources.WORKER_POOL_PLURAL,
            {
                "apiVersion": resources.API_VERSION,
                "kind": resources.WORKER_POOL_KIND,
                "metadata": {"name": name},
                "spec": {"queue": queue, "template": {"image": "jobqueue/worker"}},
            },
        )

    def cleanup(self) -> None:
        for kind, name in reversed(self._cluster_objects):
            if kind == "ClusterRoleBinding":
                self.rbac.delete_cluster_role_binding(name)
            else:
                self.rbac.delete_cluster_role(name)
        self._cluster_objects.clear()
