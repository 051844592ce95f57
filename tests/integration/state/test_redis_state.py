"""RedisState against a real Redis: heartbeats expire, tokens are shared, wake-ups fan out,
and an unreachable Redis is reported as StateUnavailableError within the socket timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis
from prometheus_client import REGISTRY

from jobqueue.devenv.processes import free_port
from jobqueue.errors import UnavailableError
from jobqueue.state import RedisState, StateUnavailableError

pytestmark = pytest.mark.integration


@pytest.fixture
async def state(redis_url: str) -> AsyncIterator[RedisState]:
    async with await RedisState.open(redis_url, key_prefix="test:") as opened:
        yield opened


async def _until(condition: Callable[[], Awaitable[bool]], deadline_s: float = 5.0) -> float:
    """Poll ``condition`` (an async callable) until true; return the seconds it took."""
    began = time.monotonic()
    while not await condition():
        assert time.monotonic() - began < deadline_s, "condition not met before the deadline"
        await asyncio.sleep(0.02)
    return time.monotonic() - began


# Heartbeats ---------------------------------------------------------------------------


async def test_heartbeat_keeps_a_worker_alive_until_its_ttl_runs_out(state: RedisState) -> None:
    began = time.monotonic()
    await state.heartbeat("worker-1", 0.3, {"busy": 2, "pool": "emails"})

    assert await state.alive(["worker-1", "worker-2"]) == {"worker-1"}
    assert await state.heartbeat_info("worker-1") == {"busy": 2, "pool": "emails"}

    async def expired() -> bool:
        return not await state.alive(["worker-1"])

    await _until(expired)
    assert time.monotonic() - began >= 0.25
    assert await state.heartbeat_info("worker-1") is None


async def test_a_new_heartbeat_extends_the_ttl(state: RedisState, redis_url: str) -> None:
    await state.heartbeat("worker-1", 0.2, {"busy": 0})
    await state.heartbeat("worker-1", 30, {"busy": 1})

    with redis.Redis.from_url(redis_url) as client:
        assert 29_000 < client.pttl("test:heartbeat:worker-1") <= 30_000
    assert await state.heartbeat_info("worker-1") == {"busy": 1}


async def test_alive_picks_the_live_workers_out_of_many(state: RedisState) -> None:
    for number in range(0, 60, 2):
        await state.heartbeat(f"worker-{number}", 30, {})

    alive = await state.alive([f"worker-{number}" for number in range(60)])

    assert alive == {f"worker-{number}" for number in range(0, 60, 2)}
    assert await state.alive([]) == set()


async def test_forgotten_worker_is_no_longer_alive(state: RedisState) -> None:
    await state.heartbeat("worker-1", 30, {})

    await state.forget("worker-1")

    assert await state.alive(["worker-1"]) == set()


# Rate limits --------------------------------------------------------------------------


async def test_a_new_bucket_grants_its_burst_then_refills_with_time(state: RedisState) -> None:
    rate_per_s, burst = 20.0, 10
    drain_began = time.monotonic()
    assert await state.take_tokens("emails", 100, rate_per_s, burst) == burst
    drain_ended = time.monotonic()

    await asyncio.sleep(0.5)  # the refill is what is under test: time has to pass
    take_began = time.monotonic()
    granted = await state.take_tokens("emails", 100, rate_per_s, burst)
    take_ended = time.monotonic()

    # Server time of both calls lies within the client's readings around them.
    assert granted <= rate_per_s * (take_ended - drain_began) + 1
    assert granted >= int(rate_per_s * (take_began - drain_ended))


async def test_concurrent_takers_never_exceed_burst_plus_rate(redis_url: str) -> None:
    rate_per_s, burst = 50.0, 10
    replicas = [await RedisState.open(redis_url, key_prefix="test:") for _ in range(2)]
    granted: list[int] = []
    calls: list[tuple[float, float]] = []  # when each take began and ended, client side
    began = time.monotonic()

    async def taker(replica: RedisState) -> None:
        while time.monotonic() - began < 1.0:
            start = time.monotonic()
            granted.append(await replica.take_tokens("emails", 3, rate_per_s, burst))
            calls.append((start, time.monotonic()))

    try:
        await asyncio.gather(*(taker(replicas[n % 2]) for n in range(8)))
    finally:
        for replica in replicas:
            await replica.close()
    elapsed_s = time.monotonic() - began

    assert sum(granted) <= burst + rate_per_s * elapsed_s
    # The bucket did refill meanwhile: at least for the time from the end of the first
    # take to the start of the last (a busy machine can start the first one late), less
    # what the last takes may have left in it.
    first_ended = min(ended for _, ended in calls)
    last_began = max(start for start, _ in calls)
    assert sum(granted) >= burst + rate_per_s * (last_began - first_ended) - 5
    assert all(0 <= tokens <= 3 for tokens in granted)


async def test_taking_nothing_or_from_an_unknown_queue(state: RedisState) -> None:
    assert await state.take_tokens("emails", 0, 1.0, 5) == 0
    assert await state.take_tokens("reports", 2, 1.0, 5) == 2


async def test_an_idle_bucket_expires_once_it_would_be_full(
    state: RedisState, redis_url: str
) -> None:
    await state.take_tokens("emails", 1, rate_per_s=10.0, burst=5)

    with redis.Redis.from_url(redis_url) as client:
        ttl_ms = client.pttl("test:tokens:emails")

    assert 1000 < ttl_ms <= 1500  # 5 tokens at 10/s refill in 500 ms, plus a second


# Wake-ups -----------------------------------------------------------------------------


async def _subscribers(redis_url: str, channel: str) -> int:
    with redis.Redis.from_url(redis_url) as client:
        counts = dict(client.pubsub_numsub(channel))
    return int(counts.get(channel.encode(), 0))


async def test_wakeups_reach_every_subscriber(state: RedisState, redis_url: str) -> None:
    other_replica = await RedisState.open(redis_url, key_prefix="test:")
    received: list[asyncio.Queue[str]] = [asyncio.Queue(), asyncio.Queue()]

    async def follow(replica: RedisState, into: asyncio.Queue[str]) -> None:
        async for queue in replica.wakeups():
            into.put_nowait(queue)

    followers = [
        asyncio.create_task(follow(state, received[0]), name="follower-0"),
        asyncio.create_task(follow(other_replica, received[1]), name="follower-1"),
    ]
    try:

        async def both_subscribed() -> bool:
            return await _subscribers(redis_url, "test:wakeup") == 2

        await _until(both_subscribed)

        await state.publish_wakeup("emails")
        await other_replica.publish_wakeup("reports")

        for into in received:
            got = [await asyncio.wait_for(into.get(), 5), await asyncio.wait_for(into.get(), 5)]
            assert got == ["emails", "reports"]
    finally:
        for follower in followers:
            follower.cancel()
        await asyncio.gather(*followers, return_exceptions=True)
        await other_replica.close()

    async def unsubscribed() -> bool:
        return await _subscribers(redis_url, "test:wakeup") == 0

    await _until(unsubscribed)


async def test_losing_the_subscription_raises_state_unavailable(
    state: RedisState, redis_url: str
) -> None:
    wakeups = state.wakeups()

    async def first_wakeup() -> str:
        return await anext(wakeups)

    first = asyncio.create_task(first_wakeup(), name="first-wakeup")

    async def subscribed() -> bool:
        return await _subscribers(redis_url, "test:wakeup") == 1

    await _until(subscribed)
    database = redis_url.rsplit("/", 1)[1]
    with redis.Redis.from_url(redis_url) as client:
        for entry in client.client_list(_type="pubsub"):
            if entry["db"] == database:
                client.client_kill_filter(_id=entry["id"])

    with pytest.raises(StateUnavailableError, match="subscription was lost"):
        await asyncio.wait_for(first, 5)
    await wakeups.aclose()


# Outages ------------------------------------------------------------------------------


def _timed_calls(operation: str) -> float:
    value = REGISTRY.get_sample_value(
        "jobqueue_redis_call_duration_seconds_count", {"operation": operation}
    )
    return value or 0.0


async def test_closed_port_raises_state_unavailable_within_the_socket_timeout() -> None:
    socket_timeout_s = 0.5
    state = await RedisState.open(
        f"redis://127.0.0.1:{free_port()}/0", socket_timeout_s=socket_timeout_s
    )
    calls_before = _timed_calls("alive")
    try:
        calls = [
            ("heartbeat", state.heartbeat("worker-1", 5, {})),
            ("alive", state.alive(["worker-1"])),
            ("forget", state.forget("worker-1")),
            ("take_tokens", state.take_tokens("emails", 1, 1.0, 1)),
            ("publish_wakeup", state.publish_wakeup("emails")),
            ("ping", state.ping()),
            ("subscribe", anext(state.wakeups())),
        ]
        for operation, call in calls:
            began = time.monotonic()
            with pytest.raises(StateUnavailableError, match=operation) as raised:
                await call
            assert time.monotonic() - began < socket_timeout_s, operation
            assert isinstance(raised.value, UnavailableError)
            assert raised.value.__cause__ is not None
    finally:
        await state.close()

    assert _timed_calls("alive") == calls_before + 1


async def test_a_server_that_never_answers_times_out_as_unavailable() -> None:
    connections: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)  # accept the connection and say nothing

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    socket_timeout_s = 0.3
    state = await RedisState.open(f"redis://127.0.0.1:{port}/0", socket_timeout_s=socket_timeout_s)
    try:
        began = time.monotonic()
        with pytest.raises(StateUnavailableError, match="alive"):
            await state.alive(["worker-1"])
        assert time.monotonic() - began < socket_timeout_s + 0.3
    finally:
        await state.close()
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()
