"""Who may call the API: tokens verified by TokenReview, verbs checked by RBAC, per queue."""

from __future__ import annotations

import uuid

import pytest

from jobqueue import errors
from jobqueue.api.v1 import jobs_pb2
from jobqueue.client import job_spec
from jobqueue.store import JobKind, QueuePolicy
from tests.integration.security.cluster import Cluster
from tests.integration.security.conftest import (
    CACHE_TTL_S,
    QUEUE_A,
    QUEUE_B,
    SecureOperator,
    StartOperator,
)
from tests.polling import eventually

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def echo(queue: str) -> jobs_pb2.JobSpec:
    return job_spec(queue, command=["echo", "hi"])


async def jobs_in(operator: SecureOperator, queue: str) -> int:
    jobs, _ = await operator.parts.store.list_jobs(queue=queue, limit=100)
    return len(jobs)


@pytest.mark.parametrize(
    "token",
    [None, "not-a-token", "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJtZSJ9.c2lnbmF0dXJl"],
    ids=["no token", "garbage", "forged JWT"],
)
async def test_calls_without_a_valid_token_are_unauthenticated_and_change_nothing(
    operator: SecureOperator, token: str | None
) -> None:
    async with operator.client(token) as client:
        with pytest.raises(errors.UnauthenticatedError) as refused:
            await client.submit(echo(QUEUE_A))
        with pytest.raises(errors.UnauthenticatedError):
            await client.pause(QUEUE_A)

    assert ("no credentials" in str(refused.value)) == (token is None)
    assert await jobs_in(operator, QUEUE_A) == 0
    assert not (await operator.parts.store.get_queue(QUEUE_A)).paused


async def test_a_token_of_a_deleted_service_account_is_unauthenticated(
    operator: SecureOperator, cluster: Cluster
) -> None:
    account = cluster.service_account("leaver")
    cluster.grant(account, ["submit"], [QUEUE_A])
    token = cluster.token(account)
    async with operator.client(token) as client:
        await client.submit(echo(QUEUE_A))

        cluster.delete_service_account(account)

        async def refused() -> bool:
            try:
                await client.submit(echo(QUEUE_A))
            except errors.UnauthenticatedError:
                return True
            return False

        await eventually(refused, timeout_s=CACHE_TTL_S + 10)
    # Anything submitted meanwhile was within the cache time; the refusal changed nothing.
    count = await jobs_in(operator, QUEUE_A)
    async with operator.client(token) as client:
        with pytest.raises(errors.UnauthenticatedError):
            await client.submit(echo(QUEUE_A))
    assert await jobs_in(operator, QUEUE_A) == count


async def test_only_tokens_for_the_configured_audience_are_accepted(
    start_operator: StartOperator, cluster: Cluster
) -> None:
    account = cluster.service_account("submitter")
    cluster.grant(account, ["submit"], [QUEUE_A])
    async with start_operator({"JQ_OPERATOR_AUTH_AUDIENCES": "jobqueue"}) as operator:
        async with operator.client(cluster.token(account, audiences=["elsewhere"])) as client:
            with pytest.raises(errors.UnauthenticatedError):
                await client.submit(echo(QUEUE_A))
        # A token for the API server itself is no good either: it could be replayed there.
        async with operator.client(cluster.token(account)) as client:
            with pytest.raises(errors.UnauthenticatedError):
                await client.submit(echo(QUEUE_A))
        async with operator.client(cluster.token(account, audiences=["jobqueue"])) as client:
            await client.submit(echo(QUEUE_A))

        assert await jobs_in(operator, QUEUE_A) == 1


async def test_a_role_for_one_queue_allows_submitting_there_and_nowhere_else(
    operator: SecureOperator, cluster: Cluster
) -> None:
    account = cluster.service_account("team-a")
    cluster.grant(account, ["submit"], [QUEUE_A])

    async with operator.client(cluster.token(account)) as client:
        job = await client.submit(echo(QUEUE_A))
        with pytest.raises(errors.PermissionDeniedError) as denied:
            await client.submit(echo(QUEUE_B))
        # A batch touching a forbidden queue is refused whole.
        with pytest.raises(errors.PermissionDeniedError):
            await client.submit_batch([echo(QUEUE_A), echo(QUEUE_B)])
        # Submitting is not reading: get needs its own verb.
        with pytest.raises(errors.PermissionDeniedError, match="get on the jobs of queue"):
            await client.get(job.id)
        # Single submits share one SubmitStream: the denied one did not end it.
        await client.submit(echo(QUEUE_A))
        assert client.submit_streams_opened == 1

    message = str(denied.value)
    assert "submit" in message
    assert QUEUE_B in message
    assert cluster.username(account) in message
    assert await jobs_in(operator, QUEUE_A) == 2
    assert await jobs_in(operator, QUEUE_B) == 0


async def test_revoking_the_role_binding_takes_effect_within_the_cache_ttl(
    operator: SecureOperator, cluster: Cluster
) -> None:
    account = cluster.service_account("revoked")
    binding = cluster.grant(account, ["submit"], [QUEUE_A])

    async with operator.client(cluster.token(account)) as client:
        await client.submit(echo(QUEUE_A))
        cluster.revoke(binding)

        async def denied() -> bool:
            try:
                await client.submit(echo(QUEUE_A))
            except errors.PermissionDeniedError:
                return True
            return False

        # RBAC itself takes a moment to see the deletion; the cache adds at most its TTL.
        await eventually(denied, timeout_s=CACHE_TTL_S + 10)


async def test_calls_on_a_job_are_checked_against_the_jobs_queue(
    operator: SecureOperator, cluster: Cluster
) -> None:
    submitter = cluster.service_account("submitter")
    cluster.grant(submitter, ["submit"], [QUEUE_A, QUEUE_B])
    reader = cluster.service_account("reader")
    cluster.grant(reader, ["get", "watch", "cancel"], [QUEUE_A])
    async with operator.client(cluster.token(submitter)) as client:
        on_a = await client.submit(echo(QUEUE_A))
        on_b = await client.submit(echo(QUEUE_B))

    async with operator.client(cluster.token(reader)) as client:
        assert (await client.get(on_a.id)).id == on_a.id
        assert [event.kind for event in await client.events(on_a.id)]
        with pytest.raises(errors.PermissionDeniedError, match=QUEUE_B):
            await client.get(on_b.id)
        with pytest.raises(errors.PermissionDeniedError):
            await client.cancel(on_b.id)
        with pytest.raises(errors.PermissionDeniedError):
            await client.retry(on_a.id)
        with pytest.raises(errors.NotFoundError):
            await client.get(str(uuid.uuid4()))
        cancelled = await client.cancel(on_a.id)

    assert cancelled.state == jobs_pb2.JOB_STATE_CANCELLED
    assert (await operator.parts.store.get(on_b.id)).state.value == "pending"


async def test_calls_across_every_queue_need_a_cluster_wide_grant(
    operator: SecureOperator, cluster: Cluster
) -> None:
    account = cluster.service_account("on-call")
    cluster.grant(account, ["status", "list"], None)  # every queue, but of one namespace

    async with operator.client(cluster.token(account)) as client:
        assert (await client.queue_stats(QUEUE_A)) is not None
        assert not (await client.list_jobs(QUEUE_A)).jobs
        with pytest.raises(errors.PermissionDeniedError, match="cluster-wide"):
            await client.system_status()
        with pytest.raises(errors.PermissionDeniedError, match="cluster-wide"):
            await client.list_jobs()

        cluster.grant_cluster_wide(account, ["status", "list"])

        async def allowed() -> bool:
            try:
                await client.system_status()
            except errors.PermissionDeniedError:
                return False
            return True

        await eventually(allowed, timeout_s=CACHE_TTL_S + 10)
        assert not (await client.list_jobs()).jobs


async def test_pausing_a_queue_needs_the_pause_verb(
    operator: SecureOperator, cluster: Cluster
) -> None:
    account = cluster.service_account("operator-on-call")
    cluster.grant(account, ["pause"], [QUEUE_A])

    async with operator.client(cluster.token(account)) as client:
        await client.pause(QUEUE_A)
        with pytest.raises(errors.PermissionDeniedError, match="resume"):
            await client.resume(QUEUE_A)

    assert (await operator.parts.store.get_queue(QUEUE_A)).paused


async def test_a_queue_that_forbids_command_jobs_refuses_them_at_submit(
    operator: SecureOperator, cluster: Cluster, namespace: str
) -> None:
    await operator.parts.store.apply_queue(
        QueuePolicy(
            name="handlers-only", namespace=namespace, allowed_kinds=frozenset({JobKind.PYTHON})
        )
    )
    account = cluster.service_account("submitter")
    cluster.grant(account, ["submit"], ["handlers-only"])

    async with operator.client(cluster.token(account)) as client:
        with pytest.raises(errors.InvalidInputError, match="does not allow command jobs"):
            await client.submit(echo("handlers-only"))
        await client.submit(job_spec("handlers-only", handler="tasks:send", arguments={}))

    assert await jobs_in(operator, "handlers-only") == 1
