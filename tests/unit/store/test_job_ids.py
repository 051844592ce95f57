from __future__ import annotations

import time
import uuid

from jobqueue.store.model import new_job_id


def test_a_job_id_is_a_version_7_uuid_carrying_the_time_of_its_making() -> None:
    before_ms = time.time_ns() // 1_000_000
    made = uuid.UUID(new_job_id())
    after_ms = time.time_ns() // 1_000_000

    assert made.version == 7
    assert made.variant == uuid.RFC_4122
    assert before_ms <= made.int >> 80 <= after_ms


def test_job_ids_made_later_sort_after_and_never_repeat() -> None:
    earlier = [new_job_id() for _ in range(5000)]
    deadline = time.monotonic() + 1.0
    first_ms = uuid.UUID(earlier[-1]).int >> 80
    later = new_job_id()
    while uuid.UUID(later).int >> 80 == first_ms and time.monotonic() < deadline:
        later = new_job_id()  # the next millisecond, without sleeping

    assert all(later > job_id for job_id in earlier)
    assert len(set(earlier)) == len(earlier)
