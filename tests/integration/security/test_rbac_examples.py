"""The example Roles in manifests/examples/rbac grant what their comments and the docs say.

Each file is applied to the real API server (the namespaced ones moved into the test's
namespace, the cluster-wide ones only as a server-side dry run, so no test leaves a
ClusterRole behind), and SubjectAccessReviews ask what the subjects may then do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as kube_client
from kubernetes import utils as kube_utils

from jobqueue.operator.auth import Access, Identity, KubernetesReviews
from tests.polling import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

EXAMPLES = Path(__file__).resolve().parents[3] / "manifests" / "examples" / "rbac"
EXAMPLE_NAMESPACE = "mail"


def documents(name: str, namespace: str) -> list[dict[str, Any]]:
    """The file's objects, with the example namespace replaced by ``namespace``."""
    text = (
        (EXAMPLES / name)
        .read_text()
        .replace(f"namespace: {EXAMPLE_NAMESPACE}", f"namespace: {namespace}")
    )
    return [document for document in yaml.safe_load_all(text) if document]


def apply(api: kube_client.ApiClient, name: str, namespace: str, **options: Any) -> None:
    for document in documents(name, namespace):
        kube_utils.create_from_dict(api, document, **options)


async def may(
    reviews: KubernetesReviews, account: str, namespace: str, verb: str, queue: str
) -> bool:
    identity = Identity.of(
        f"system:serviceaccount:{namespace}:{account}",
        groups=["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
    )
    return (await reviews.review_access(identity, Access(verb, queue, namespace))).allowed


async def test_the_submitter_and_worker_examples_grant_exactly_their_verbs(
    kube_api_client: kube_client.ApiClient, namespace: str
) -> None:
    apply(kube_api_client, "submitter.yaml", namespace)
    apply(kube_api_client, "worker.yaml", namespace)
    reviews = KubernetesReviews(kube_api_client)
    try:

        async def granted() -> bool:
            return await may(reviews, "mailer", namespace, "submit", "emails")

        await eventually(granted, timeout_s=10)
        for verb in ("submit", "get", "list", "watch", "cancel", "retry"):
            assert await may(reviews, "mailer", namespace, verb, "emails"), verb
        for verb in ("pause", "drain", "work", "status"):
            assert not await may(reviews, "mailer", namespace, verb, "emails"), verb
        assert not await may(reviews, "mailer", namespace, "submit", "invoices")

        assert await may(reviews, "emails-workers", namespace, "work", "emails")
        assert not await may(reviews, "emails-workers", namespace, "work", "invoices")
        assert not await may(reviews, "emails-workers", namespace, "submit", "emails")
    finally:
        reviews.close()


@pytest.mark.parametrize("name", ["on-call.yaml", "aggregated.yaml"])
def test_the_cluster_wide_examples_are_accepted_by_the_api_server(
    kube_api_client: kube_client.ApiClient, name: str
) -> None:
    apply(kube_api_client, name, "unused", dry_run="All")
