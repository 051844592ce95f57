"""Which processes used the machine's CPUs during a phase, read from ``/proc``.

The benchmark, the operator, the workers and the servers share two cores, so a rate is
capped by whichever of them the CPUs are busy with. A snapshot sums each process's user
and system time (``/proc/<pid>/stat``) into a group: the benchmark's own children by pid
(the operator, the workers; with their descendants), the servers by program name
(``postgres`` with its backends, Kafka's ``java``, ``redis-server``), and the benchmark
process itself. The difference of two snapshots over the wall time between them is how
many cores each group kept busy, and over the jobs run meanwhile what each job cost each
group. Processes that ended between the snapshots are missed, which the long-lived
processes measured here never do.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

_TICKS_PER_S = os.sysconf("SC_CLK_TCK")

# Servers, by the program name the kernel reports for them.
_SERVER_GROUPS = {"postgres": "postgres", "java": "kafka", "redis-server": "redis"}


@dataclass(frozen=True)
class _Process:
    pid: int
    parent: int
    name: str
    cpu_s: float


def _processes() -> dict[int, _Process]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            text = (entry / "stat").read_text()
        except OSError:
            continue  # it ended while we looked
        # The name is in parentheses and may hold spaces; the fields after it are fixed.
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text[text.rindex(")") + 2 :].split()
        user, system = int(fields[11]), int(fields[12])
        found[int(entry.name)] = _Process(
            int(entry.name), int(fields[1]), name, (user + system) / _TICKS_PER_S
        )
    return found


def snapshot(roots: Mapping[int, str]) -> dict[str, float]:
    """CPU seconds so far per group; ``roots`` names the processes whose trees form groups."""
    processes = _processes()
    totals: defaultdict[str, float] = defaultdict(float)
    for process in processes.values():
        totals[_group(process, processes, roots)] += process.cpu_s
    return dict(totals)


def _group(process: _Process, processes: Mapping[int, _Process], roots: Mapping[int, str]) -> str:
    server = _SERVER_GROUPS.get(process.name)
    if server is not None:
        return server
    current: _Process | None = process
    while current is not None:
        if current.pid in roots:
            return roots[current.pid]
        current = processes.get(current.parent)
    return "other"


def used(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """CPU seconds each group used between two snapshots, busiest first."""
    spent = {group: after[group] - before.get(group, 0.0) for group in after}
    return dict(sorted(spent.items(), key=lambda item: -item[1]))
