"""Where the operator's time goes: a summary of the pyinstrument session of a drain.

The operator process samples its main thread (the event loop) every millisecond while
the benchmark tells it to (see ``operator_process``). Each sample is a call stack and the
wall time it stands for. This module reads the saved session and says:

- how busy the loop was: samples not parked in the selector's ``select`` (waiting for a
  socket) over all samples. A loop near 100 % busy is the bottleneck; one well under it
  waits on something else (the database, the workers);
- which libraries the busy time is spent in, by the file of the innermost frame
  (psycopg, grpc, protobuf, asyncio, jobqueue, ...);
- the functions with the most self time, and the jobqueue functions with the most time
  including what they call.

Threads are not sampled: the relay's Kafka calls run in ``asyncio.to_thread`` and show up
only as the loop's time spent handing work to them. The full call tree is written beside
the results as text.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyinstrument.renderers import ConsoleRenderer
from pyinstrument.session import Session

_SEPARATOR = "\x00"  # between function, file and line in a pyinstrument frame identifier
_ATTRIBUTES = "\x01"  # starts the per-sample attributes of a frame

# Library names by a distinctive part of the file path, most specific first.
_LIBRARIES: tuple[tuple[str, str], ...] = (
    ("/jobqueue/", "jobqueue"),
    ("/psycopg_pool/", "psycopg"),
    ("/psycopg/", "psycopg"),
    ("/grpc/", "grpc"),
    ("/google/protobuf/", "protobuf"),
    ("/redis/", "redis"),
    ("/confluent_kafka/", "kafka"),
    ("/prometheus_client/", "prometheus"),
    ("/asyncio/", "asyncio"),
    ("/json/", "json"),
    ("/dataclasses.py", "dataclasses"),
    ("/uuid.py", "uuid"),
    ("/logging/", "logging"),
)


@dataclass(frozen=True)
class Cost:
    name: str
    share: float  # of the busy time, 0..1


@dataclass(frozen=True)
class ProfileSummary:
    seconds: float
    samples: int
    busy_share: float  # of the wall time, 0..1
    libraries: tuple[Cost, ...]
    self_time: tuple[Cost, ...]
    jobqueue_total_time: tuple[Cost, ...]
    report: str  # where the full call tree was written


def _identifier(frame_info: str) -> tuple[str, str]:
    """(function, file) of a frame."""
    function, _, rest = frame_info.partition(_ATTRIBUTES)[0].partition(_SEPARATOR)
    file, _, _ = rest.partition(_SEPARATOR)
    return function, file


def _library(file: str) -> str:
    for marker, name in _LIBRARIES:
        if marker in file:
            return name
    return "other"


def _short(function: str, file: str) -> str:
    marker = "/jobqueue/"
    if marker in file:
        module = file[file.rindex(marker) + 1 :].removesuffix(".py").replace("/", ".")
    else:
        module = Path(file).stem
    return f"{module}:{function}"


def _idle(stack: Sequence[str]) -> bool:
    # The loop blocks in selectors' select() (which calls epoll) while no socket is ready.
    return any(_identifier(frame)[0] == "select" for frame in stack[-2:])


def _top(seconds_by_name: dict[str, float], total: float, limit: int) -> tuple[Cost, ...]:
    ranked = sorted(seconds_by_name.items(), key=lambda item: -item[1])[:limit]
    return tuple(Cost(name, seconds / total) for name, seconds in ranked)


def summarise(session_path: Path, report_path: Path, *, limit: int = 12) -> ProfileSummary:
    """Read a saved session, write its call tree to ``report_path``, and sum it up."""
    session = Session.load(session_path)
    report_path.write_text(
        ConsoleRenderer(unicode=False, color=False, time="percent_of_total").render(session)
    )

    busy_s = 0.0
    libraries: defaultdict[str, float] = defaultdict(float)
    self_time: defaultdict[str, float] = defaultdict(float)
    jobqueue_total: defaultdict[str, float] = defaultdict(float)
    for stack, seconds in session.frame_records:
        if not stack or _idle(stack):
            continue
        busy_s += seconds
        function, file = _identifier(stack[-1])
        libraries[_library(file)] += seconds
        self_time[_short(function, file)] += seconds
        for name in _distinct_jobqueue_frames(stack):
            jobqueue_total[name] += seconds

    wall_s = sum(seconds for _, seconds in session.frame_records) or 1.0
    busy = busy_s or 1.0
    return ProfileSummary(
        seconds=session.duration,
        samples=session.sample_count,
        busy_share=busy_s / wall_s,
        libraries=_top(libraries, busy, limit),
        self_time=_top(self_time, busy, limit),
        jobqueue_total_time=_top(jobqueue_total, busy, limit),
        report=str(report_path),
    )


def _distinct_jobqueue_frames(stack: Iterable[str]) -> set[str]:
    """The jobqueue functions on a stack, each once however deep it recurses."""
    names = set()
    for frame in stack:
        function, file = _identifier(frame)
        if "/jobqueue/" in file and "/jobqueue/bench/" not in file:
            names.add(_short(function, file))
    return names
