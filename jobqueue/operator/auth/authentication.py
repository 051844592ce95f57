"""Step 1: who is calling. The bearer token of a call, verified with a TokenReview.

A call carries ``authorization: Bearer <token>`` metadata; the API server that issued the
token is asked whether it is valid and for whom (TokenReview), optionally for one of the
audiences the operator requires (``operator.auth.audiences``). The answer is cached by
the token's SHA-256, never by the token itself, for at most the cache TTL and never past
the token's own expiry (read, not trusted, from its JWT claims: the review decides
validity, the claim only shortens the cache). Refusals are cached too, so a client stuck
retrying a bad token costs one review per TTL.

A refused caller is told only that its token was not accepted, as the API server tells
its own callers; the API server's detail goes to the debug log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import time
from collections.abc import Iterable, Sequence

from jobqueue.errors import UnauthenticatedError
from jobqueue.operator.auth.cache import ExpiringCache
from jobqueue.operator.auth.model import Identity, TokenVerdict
from jobqueue.operator.auth.reviews import Reviews

logger = logging.getLogger(__name__)

AUTHORIZATION_KEY = "authorization"
# A token longer than this is refused unread; real ones are a few kilobytes at most.
MAX_TOKEN_CHARS = 16 * 1024

NO_TOKEN = (
    "no credentials: send the metadata 'authorization: Bearer <token>' with a Kubernetes "
    "token (a ServiceAccount token, or the token of your kubeconfig: jqctl --token-file, "
    "--token or $JQ_TOKEN)"
)
NOT_ACCEPTED = (
    "the bearer token was not accepted by Kubernetes (unknown, expired, revoked, or issued "
    "for another audience)"
)


def bearer_token(metadata: Iterable[tuple[str, str | bytes]]) -> str:
    """The token of the call's ``authorization`` metadata; UnauthenticatedError otherwise."""
    values = [value for key, value in metadata if key.lower() == AUTHORIZATION_KEY]
    if not values:
        raise UnauthenticatedError(NO_TOKEN)
    if len(values) > 1:
        raise UnauthenticatedError("more than one authorization metadata entry; send one")
    value = values[0] if isinstance(values[0], str) else values[0].decode("latin-1")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise UnauthenticatedError("the authorization metadata must be 'Bearer <token>'")
    if len(token) > MAX_TOKEN_CHARS:
        raise UnauthenticatedError(f"the bearer token is longer than {MAX_TOKEN_CHARS} characters")
    return token


def seconds_until_expiry(token: str, now: float) -> float | None:
    """Seconds left before the JWT's ``exp`` claim; None if the token is not a readable JWT."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        padded = parts[1] + "=" * (-len(parts[1]) % 4)
        claims = json.loads(base64.urlsafe_b64decode(padded))
    except (binascii.Error, ValueError):
        return None
    expiry = claims.get("exp") if isinstance(claims, dict) else None
    if not isinstance(expiry, int | float) or isinstance(expiry, bool):
        return None
    return float(expiry) - now


class TokenAuthenticator:
    def __init__(
        self,
        reviews: Reviews,
        *,
        audiences: Sequence[str] = (),
        cache: ExpiringCache[str, TokenVerdict],
    ) -> None:
        self._reviews = reviews
        self.audiences = tuple(audiences)
        self._cache = cache

    async def authenticate(self, metadata: Iterable[tuple[str, str | bytes]]) -> Identity:
        token = bearer_token(metadata)
        key = hashlib.sha256(token.encode()).hexdigest()

        async def review() -> TokenVerdict:
            return await self._reviews.review_token(token, self.audiences)

        def keep_s(verdict: TokenVerdict) -> float:
            left = seconds_until_expiry(token, time.time())
            return self._cache.ttl_s if left is None else left

        verdict = await self._cache.get(key, review, keep_s)
        if verdict.identity is None:
            logger.debug("A bearer token was refused: %s", verdict.reason)
            raise UnauthenticatedError(NOT_ACCEPTED)
        return verdict.identity
