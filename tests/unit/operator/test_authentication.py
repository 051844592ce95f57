"""Bearer tokens: how they are read from metadata, and how long a review is trusted."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Sequence

import pytest

from jobqueue.errors import UnauthenticatedError
from jobqueue.operator.auth.authentication import (
    TokenAuthenticator,
    bearer_token,
    seconds_until_expiry,
)
from jobqueue.operator.auth.cache import ExpiringCache
from jobqueue.operator.auth.model import (
    POD_NAME_EXTRA,
    POD_UID_EXTRA,
    Access,
    Decision,
    Identity,
    PodFacts,
    PodRef,
    TokenVerdict,
)


def jwt(claims: dict[str, object]) -> str:
    def part(value: dict[str, object]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2lnbmF0dXJl"


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ([], "no credentials"),
        ([("authorization", "Basic dXNlcjpwYXNz")], "must be 'Bearer <token>'"),
        ([("authorization", "Bearer ")], "must be 'Bearer <token>'"),
        ([("authorization", "Bearer a"), ("authorization", "Bearer b")], "more than one"),
        ([("authorization", "Bearer " + "x" * 20000)], "longer than"),
    ],
)
def test_malformed_authorization_is_refused_before_any_review(
    metadata: list[tuple[str, str]], message: str
) -> None:
    with pytest.raises(UnauthenticatedError, match=message):
        bearer_token(metadata)


def test_the_scheme_is_case_insensitive() -> None:
    assert bearer_token([("authorization", "bearer abc")]) == "abc"


def test_the_expiry_of_a_jwt_is_read_and_anything_else_has_none() -> None:
    now = time.time()

    assert seconds_until_expiry(jwt({"exp": now + 30}), now) == pytest.approx(30)
    assert seconds_until_expiry(jwt({"sub": "no expiry"}), now) is None
    assert seconds_until_expiry("opaque-token", now) is None
    assert seconds_until_expiry("a.%%%.c", now) is None


class TableReviews:
    """Answers TokenReviews from a table and counts them."""

    def __init__(self, accepted: dict[str, Identity]) -> None:
        self.accepted = accepted
        self.reviews = 0

    async def review_token(self, token: str, audiences: Sequence[str]) -> TokenVerdict:
        self.reviews += 1
        identity = self.accepted.get(token)
        return TokenVerdict(identity, "" if identity else "unknown token")

    async def review_access(self, identity: Identity, access: Access) -> Decision:
        raise NotImplementedError

    async def read_pod(self, namespace: str, name: str) -> PodFacts | None:
        raise NotImplementedError

    async def pool_queue(self, namespace: str, pool: str) -> str | None:
        raise NotImplementedError


async def test_answers_are_cached_refusals_included() -> None:
    alice = Identity.of("alice")
    reviews = TableReviews({"good": alice})
    authenticator = TokenAuthenticator(reviews, cache=ExpiringCache(60.0, 100))

    for _ in range(3):
        assert await authenticator.authenticate([("authorization", "Bearer good")]) == alice
        with pytest.raises(UnauthenticatedError, match="not accepted"):
            await authenticator.authenticate([("authorization", "Bearer bad")])

    assert reviews.reviews == 2


async def test_a_token_is_not_trusted_past_its_own_expiry() -> None:
    soon = jwt({"exp": time.time() - 1})
    reviews = TableReviews({soon: Identity.of("alice")})
    authenticator = TokenAuthenticator(reviews, cache=ExpiringCache(60.0, 100))

    await authenticator.authenticate([("authorization", f"Bearer {soon}")])
    await authenticator.authenticate([("authorization", f"Bearer {soon}")])

    assert reviews.reviews == 2


def test_a_pod_bound_service_account_token_names_its_pod() -> None:
    bound = Identity.of(
        "system:serviceaccount:team:workers",
        extra={POD_NAME_EXTRA: ["pool-a-1"], POD_UID_EXTRA: ["uid-1"]},
    )

    assert bound.service_account == ("team", "workers")
    assert bound.pod == PodRef("team", "pool-a-1", "uid-1")
    assert Identity.of("alice", extra={POD_NAME_EXTRA: ["x"], POD_UID_EXTRA: ["y"]}).pod is None
