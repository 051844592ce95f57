"""Short-lived, high-rate state: worker heartbeats, rate-limit tokens, dispatch wake-ups.

``RedisState`` keeps them in Redis, shared by every operator replica; ``LocalTokenBucket``
is the per-process fallback for rate limits while Redis is down. What an outage means
for each is set out in ``jobqueue.state.redis_state``. Nothing here knows of gRPC or kopf.
"""

from jobqueue.state.redis_state import TAKE_TOKENS_SCRIPT, RedisState, StateUnavailableError
from jobqueue.state.tokens import LocalTokenBucket, TokenBucket

__all__ = [
    "TAKE_TOKENS_SCRIPT",
    "LocalTokenBucket",
    "RedisState",
    "StateUnavailableError",
    "TokenBucket",
]
