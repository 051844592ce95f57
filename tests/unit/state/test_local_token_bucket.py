"""The in-process token bucket, the rate-limit fallback while Redis is down."""

from __future__ import annotations

import pytest

from jobqueue.errors import InvalidInputError
from jobqueue.state import LocalTokenBucket
from jobqueue.state.tokens import BucketLevel, refill


class ManualClock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


async def test_a_new_bucket_grants_its_whole_burst_at_once(clock: ManualClock) -> None:
    bucket = LocalTokenBucket(clock)

    assert await bucket.take_tokens("emails", 10, rate_per_s=2.0, burst=5) == 5
    assert await bucket.take_tokens("emails", 10, rate_per_s=2.0, burst=5) == 0


async def test_tokens_refill_in_proportion_to_time(clock: ManualClock) -> None:
    bucket = LocalTokenBucket(clock)
    await bucket.take_tokens("emails", 5, rate_per_s=2.0, burst=5)

    clock.now_s += 1.0
    assert await bucket.take_tokens("emails", 10, rate_per_s=2.0, burst=5) == 2

    clock.now_s += 0.75  # 1.5 tokens: one whole token now, the half stays
    assert await bucket.take_tokens("emails", 10, rate_per_s=2.0, burst=5) == 1
    clock.now_s += 0.25  # the half and this half make one more
    assert await bucket.take_tokens("emails", 10, rate_per_s=2.0, burst=5) == 1


async def test_an_idle_bucket_holds_no_more_than_its_burst(clock: ManualClock) -> None:
    bucket = LocalTokenBucket(clock)
    await bucket.take_tokens("emails", 5, rate_per_s=2.0, burst=5)

    clock.now_s += 3600

    assert await bucket.take_tokens("emails", 100, rate_per_s=2.0, burst=5) == 5


async def test_taking_fewer_than_available_leaves_the_rest(clock: ManualClock) -> None:
    bucket = LocalTokenBucket(clock)

    assert await bucket.take_tokens("emails", 3, rate_per_s=1.0, burst=5) == 3
    assert await bucket.take_tokens("emails", 3, rate_per_s=1.0, burst=5) == 2


async def test_queues_have_separate_buckets(clock: ManualClock) -> None:
    bucket = LocalTokenBucket(clock)

    assert await bucket.take_tokens("emails", 9, rate_per_s=1.0, burst=3) == 3
    assert await bucket.take_tokens("reports", 9, rate_per_s=1.0, burst=3) == 3


async def test_a_clock_that_goes_back_adds_no_tokens(clock: ManualClock) -> None:
    bucket = LocalTokenBucket(clock)
    await bucket.take_tokens("emails", 5, rate_per_s=1.0, burst=5)

    clock.now_s -= 10
    assert await bucket.take_tokens("emails", 5, rate_per_s=1.0, burst=5) == 0
    clock.now_s += 11  # one second past the last reading, not eleven
    assert await bucket.take_tokens("emails", 5, rate_per_s=1.0, burst=5) == 1


async def test_a_lowered_burst_caps_a_fuller_bucket(clock: ManualClock) -> None:
    bucket = LocalTokenBucket(clock)
    await bucket.take_tokens("emails", 0, rate_per_s=1.0, burst=10)

    assert await bucket.take_tokens("emails", 10, rate_per_s=1.0, burst=2) == 2


@pytest.mark.parametrize(
    ("wanted", "rate_per_s", "burst", "message"),
    [
        (-1, 1.0, 1, "cannot take -1"),
        (1, 0.0, 1, "positive number"),
        (1, float("nan"), 1, "positive number"),
        (1, float("inf"), 1, "positive number"),
        (1, 1.0, 0, "at least 1"),
    ],
)
async def test_nonsense_limits_are_refused(
    clock: ManualClock, wanted: int, rate_per_s: float, burst: int, message: str
) -> None:
    with pytest.raises(InvalidInputError, match=message):
        await LocalTokenBucket(clock).take_tokens("emails", wanted, rate_per_s, burst)


def test_refill_is_proportional_and_capped() -> None:
    assert refill(BucketLevel(0.0, 10.0), 12.5, 2.0, 100) == BucketLevel(5.0, 12.5)
    assert refill(BucketLevel(4.0, 10.0), 20.0, 2.0, 5) == BucketLevel(5.0, 20.0)
