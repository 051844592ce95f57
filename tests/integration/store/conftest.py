"""Fixtures for the store's integration tests: a store on a fresh database, a manual clock."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest

from jobqueue.store import JobStore, ManualClock


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
async def store(database_url: str, clock: ManualClock) -> AsyncIterator[JobStore]:
    # random() == 0.5 makes the jitter factor exactly 1: backoff delays are predictable.
    async with await JobStore.open(database_url, clock=clock, random=lambda: 0.5) as opened:
        yield opened


@pytest.fixture
def database(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain connection for looking at the tables behind the store's back."""
    with psycopg.connect(database_url, autocommit=True) as connection:
        yield connection
