"""Timestamps and durations built by hand equal what protobuf's own helpers build."""

from __future__ import annotations

import datetime

import pytest
from google.protobuf import duration_pb2, timestamp_pb2

from jobqueue.operator import convert

UTC = datetime.UTC
PARIS_SUMMER = datetime.timezone(datetime.timedelta(hours=2))


@pytest.mark.parametrize(
    "moment",
    [
        datetime.datetime(1970, 1, 1, tzinfo=UTC),
        datetime.datetime(2026, 12, 4, 1, 2, 3, 456789, tzinfo=UTC),
        datetime.datetime(2026, 6, 30, 23, 59, 59, 999999, tzinfo=PARIS_SUMMER),
        datetime.datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=UTC),
    ],
)
def test_timestamp_matches_from_datetime(moment: datetime.datetime) -> None:
    expected = timestamp_pb2.Timestamp()
    expected.FromDatetime(moment.astimezone(UTC))

    assert convert.timestamp(moment) == expected


@pytest.mark.parametrize(
    "seconds", [0.0, 0.5, 1.25, 1e-9, 0.0000005, 2.0000015, 600.0, 994581.9487635, 604800.0, -1.5]
)
def test_duration_matches_from_timedelta(seconds: float) -> None:
    expected = duration_pb2.Duration()
    expected.FromTimedelta(datetime.timedelta(seconds=seconds))

    assert convert.duration(seconds) == expected


@pytest.mark.parametrize("seconds", [0.0, 0.5, 1.25, 600.0, 994581.948763, 604800.0, -1.5])
def test_seconds_of_a_duration_match_to_timedelta(seconds: float) -> None:
    message = duration_pb2.Duration()
    message.FromTimedelta(datetime.timedelta(seconds=seconds))

    assert convert.seconds_of(message) == pytest.approx(
        message.ToTimedelta().total_seconds(), abs=1e-9
    )


def test_missing_values_stay_missing() -> None:
    assert convert.timestamp(None) is None
    assert convert.duration(None) is None
