"""Short-lived, high-rate state in Redis: heartbeats, rate-limit tokens, dispatch wake-ups.

PostgreSQL is the source of truth; Redis only holds what is cheap to lose and expensive to
keep in the database: which workers answered lately, how many rate-limit tokens a queue
has left, and "there is work in queue X" nudges between operator replicas. So Redis being
down degrades jobqueue and never stops it:

- Dispatch goes on by polling. ``publish_wakeup`` and ``wakeups`` raise
  ``StateUnavailableError``; the scheduler still runs every ``poll_interval_s``, so jobs
  start up to that much later, and the caller resubscribes when Redis is back.
- Heartbeats that cannot be read mean "unknown", never "dead". ``alive`` raises
  ``StateUnavailableError`` rather than returning an empty set, so a caller cannot
  mistake an outage for every worker having died; it keeps the workers it has. Leases in
  PostgreSQL, renewed by heartbeats over gRPC, remain the authority on lost workers.
  A heartbeat that cannot be written is lost and harmless.
- Rate limits fall back to ``LocalTokenBucket`` in each replica (see ``tokens``: with N
  replicas a queue may run up to N times its limit while Redis is down).

Every call is bounded by ``socket_timeout_s`` (connect and each read) and is not retried
here: the caller's fallback is the retry. Any Redis failure, a refused connection, a
timeout or an error reply, is raised as ``StateUnavailableError`` chained to the cause,
because the remedy is the same for all of them. Calls are timed in
``jobqueue_redis_call_duration_seconds`` by operation.

Keys, all under ``key_prefix`` (``jobqueue:``) so installations can share one Redis:
``heartbeat:<worker id>`` (JSON, expires after the heartbeat's TTL),
``tokens:<queue>`` (a hash; expires once the bucket would be full again) and the
channel ``wakeup`` (messages are queue names).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import AsyncGenerator, Collection, Iterator, Mapping
from typing import Any, Final

import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from jobqueue.errors import UnavailableError
from jobqueue.metrics import REDIS_CALL_DURATION
from jobqueue.state.tokens import check_bucket_arguments

logger = logging.getLogger(__name__)

# One token bucket per queue, refilled and drawn from atomically in the server. Time is
# the server's (TIME) so replicas with skewed clocks share one timeline; it is kept in
# whole microseconds, formatted with %.0f because Lua's default number format keeps only
# 14 digits. KEYS[1]: the bucket. ARGV: wanted, rate per second, burst.
TAKE_TOKENS_SCRIPT: Final = """
local wanted = tonumber(ARGV[1])
local rate_per_s = tonumber(ARGV[2])
local burst = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now_us = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

local level = redis.call('HMGET', KEYS[1], 'tokens', 'at_us')
local tokens = tonumber(level[1])
local at_us = tonumber(level[2])
if tokens == nil or at_us == nil then
  tokens = burst
  at_us = now_us
end
-- A server clock that stepped back (a failover) adds nothing rather than taking away.
if now_us > at_us then
  tokens = tokens + (now_us - at_us) / 1000000 * rate_per_s
  at_us = now_us
end
tokens = math.min(tokens, burst)

local granted = math.min(wanted, math.floor(tokens))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens),
           'at_us', string.format('%.0f', at_us))
-- An idle bucket may go once it would be full again: forgetting it then loses nothing.
redis.call('PEXPIRE', KEYS[1], string.format('%.0f', math.ceil(burst / rate_per_s * 1000) + 1000))
return granted
"""


class StateUnavailableError(UnavailableError):
    """Redis cannot be reached or did not answer in time; use the fallback."""


class RedisState:
    """Heartbeats, rate-limit tokens and wake-ups in one Redis; create with ``open``."""

    def __init__(
        self, client: redis.asyncio.Redis, *, key_prefix: str, socket_timeout_s: float
    ) -> None:
        self._redis = client
        self.key_prefix = key_prefix
        self.socket_timeout_s = socket_timeout_s
        self.wakeup_channel = f"{key_prefix}wakeup"
        self._take_tokens = client.register_script(TAKE_TOKENS_SCRIPT)

    @classmethod
    async def open(
        cls,
        url: str,
        key_prefix: str = "jobqueue:",
        socket_timeout_s: float = 0.5,
        *,
        username: str | None = None,
        password: str | None = None,
        ssl_ca_file: str | None = None,
    ) -> RedisState:
        """A client for ``url``. Does not connect: a process may start while Redis is down.

        ``rediss://`` URLs use TLS and verify the server, with ``ssl_ca_file`` or the
        system's roots; the credentials are kept out of the URL so they can come from a
        Secret.
        """
        options: dict[str, Any] = {}
        if username is not None:
            options["username"] = username
        if password is not None:
            options["password"] = password
        if ssl_ca_file is not None:
            options["ssl_ca_certs"] = ssl_ca_file
        client = redis.asyncio.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            retry=Retry(NoBackoff(), 0),  # the caller's fallback is the retry
            decode_responses=True,
            client_name="jobqueue",
            **options,
        )
        return cls(client, key_prefix=key_prefix, socket_timeout_s=socket_timeout_s)

    async def close(self) -> None:
        await self._redis.aclose()

    async def __aenter__(self) -> RedisState:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @contextlib.contextmanager
    def _call(self, operation: str) -> Iterator[None]:
        """Time one call and turn any Redis failure into ``StateUnavailableError``."""
        with REDIS_CALL_DURATION.labels(operation=operation).time():
            try:
                yield
            except (RedisError, OSError) as error:
                raise StateUnavailableError(
                    f"Redis: {operation} failed: {error or type(error).__name__}"
                ) from error

    def _heartbeat_key(self, worker_id: str) -> str:
        return f"{self.key_prefix}heartbeat:{worker_id}"

    def _bucket_key(self, queue: str) -> str:
        return f"{self.key_prefix}tokens:{queue}"

    async def ping(self) -> None:
        """Return when Redis answers (the health probe)."""
        with self._call("ping"):
            await self._redis.ping()

    # Heartbeats -------------------------------------------------------------------------

    async def heartbeat(self, worker_id: str, ttl_s: float, info: Mapping[str, str | int]) -> None:
        """Record that ``worker_id`` is alive for the next ``ttl_s`` seconds, with ``info``."""
        ttl_ms = max(1, math.ceil(ttl_s * 1000))
        with self._call("heartbeat"):
            await self._redis.set(self._heartbeat_key(worker_id), json.dumps(dict(info)), px=ttl_ms)

    async def heartbeat_info(self, worker_id: str) -> dict[str, str | int] | None:
        """What the worker's last live heartbeat said; ``None`` once it has expired."""
        with self._call("heartbeat_info"):
            text = await self._redis.get(self._heartbeat_key(worker_id))
        if text is None:
            return None
        info: dict[str, str | int] = json.loads(text)
        return info

    async def alive(self, worker_ids: Collection[str]) -> set[str]:
        """The workers among ``worker_ids`` whose heartbeat has not expired (one round trip).

        Raises ``StateUnavailableError`` when Redis cannot say: that means "unknown", and a
        caller must not treat those workers as dead.
        """
        ordered = list(worker_ids)
        if not ordered:
            return set()
        with self._call("alive"):
            async with self._redis.pipeline(transaction=False) as pipeline:
                for worker_id in ordered:
                    pipeline.exists(self._heartbeat_key(worker_id))
                found = await pipeline.execute()
        return {worker_id for worker_id, exists in zip(ordered, found, strict=True) if exists}

    async def forget(self, worker_id: str) -> None:
        """Drop a worker's heartbeat at once (it deregistered)."""
        with self._call("forget"):
            await self._redis.delete(self._heartbeat_key(worker_id))

    # Rate limits ------------------------------------------------------------------------

    async def take_tokens(self, queue: str, wanted: int, rate_per_s: float, burst: int) -> int:
        """Grant up to ``wanted`` tokens from ``queue``'s shared bucket; return how many."""
        check_bucket_arguments(wanted, rate_per_s, burst)
        if wanted == 0:
            return 0
        with self._call("take_tokens"):
            granted = await self._take_tokens(
                keys=[self._bucket_key(queue)], args=[wanted, repr(float(rate_per_s)), burst]
            )
        return int(granted)

    # Wake-ups ---------------------------------------------------------------------------

    async def publish_wakeup(self, queue: str) -> None:
        """Tell every subscribed replica that ``queue`` has work (lost if none listens)."""
        with self._call("publish_wakeup"):
            await self._redis.publish(self.wakeup_channel, queue)

    async def wakeups(self) -> AsyncGenerator[str, None]:
        """Queue names as replicas publish them, until the connection is lost.

        Runs on a connection of its own that waits without a read timeout (silence is
        normal here); a connection the server closed or reset ends the iteration with
        ``StateUnavailableError``. A connection that vanishes without a reset is noticed by
        TCP keepalive, which redis-py turns on (about 45 s). ``aclose()`` the generator (or
        cancel the task iterating it) to unsubscribe.
        """
        # Leaving the block (the end, an error, the consumer stopping) closes the connection.
        async with self._redis.pubsub(ignore_subscribe_messages=True) as pubsub:
            with self._call("subscribe"):
                await pubsub.subscribe(self.wakeup_channel)
            while True:
                try:
                    message = await pubsub.get_message(timeout=None)
                except (RedisError, OSError) as error:
                    raise StateUnavailableError(
                        f"Redis: the wake-up subscription was lost: {error}"
                    ) from error
                if message is not None and message.get("type") == "message":
                    yield str(message["data"])
