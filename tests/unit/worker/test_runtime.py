"""The worker's side of the WorkerService protocol, against a scripted operator.

The worker runs in the test's event loop, the scripted operator on a ``grpc.aio`` server
on 127.0.0.1. Python handlers registered in the worker wait on gates the test opens,
so every step is awaited on an event, never slept for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest

from jobqueue.api.v1 import workers_pb2
from jobqueue.channels import ChannelSecurity
from jobqueue.errors import PermanentError
from jobqueue.worker.connection import BackoffPolicy
from jobqueue.worker.handlers import HandlerRegistry
from jobqueue.worker.reporting import MAX_CALLS_IN_FLIGHT
from jobqueue.worker.runtime import Worker, WorkerConfig
from tests.unit.worker.scripted_operator import (
    WAIT_S,
    Recorded,
    ScriptedOperator,
    command_assignment,
    duration,
    key_of,
    python_assignment,
    start_server,
)

GATE = "tests:gate"


class Gates:
    """A handler that waits until the test opens its gate, and tells who entered."""

    def __init__(self) -> None:
        self._events: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
        self.entered: Recorded[str] = Recorded()
        self.cancelled: Recorded[str] = Recorded()

    def open(self, name: str) -> None:
        self._events[name].set()

    async def wait(self, name: str) -> str:
        self.entered.add(name)
        try:
            await self._events[name].wait()
        except asyncio.CancelledError:
            self.cancelled.add(name)
            raise
        return f"{name} done"


def gate_job(name: str, **kwargs: Any) -> workers_pb2.Assignment:
    return python_assignment(name, GATE, json.dumps({"name": name}), **kwargs)


class Harness:
    def __init__(self) -> None:
        self.servers: list[grpc.aio.Server] = []
        self.running: list[tuple[Worker, asyncio.Task[None]]] = []
        self.gates = Gates()

    async def serve(self, operator: ScriptedOperator, port: int = 0) -> int:
        server, bound = await start_server(operator, port)
        self.servers.append(server)
        return bound

    async def worker_connected(self) -> ScriptedOperator:
        """A scripted operator, and a worker with default settings streaming from it."""
        operator = ScriptedOperator()
        self.start_worker(await self.serve(operator))
        await operator.streams_opened.wait_for()
        return operator

    def start_worker(
        self, port: int, registry: HandlerRegistry | None = None, **overrides: Any
    ) -> tuple[Worker, asyncio.Task[None]]:
        if registry is None:
            registry = HandlerRegistry()
        registry.register(self.gates.wait, name=GATE)
        settings: dict[str, Any] = {
            "operator_address": f"127.0.0.1:{port}",
            "queue": "test",
            "worker_id": "worker-1",
            "pool": "pool-a",
            "concurrency": 4,
            "call_timeout_s": 5.0,
            "final_report_timeout_s": 5.0,
            "kill_grace_s": 2.0,
            "backoff": BackoffPolicy(initial_s=0.01, cap_s=0.2),
            # The scripted operator serves plaintext.
            "security": ChannelSecurity(insecure_plaintext=True),
        }
        worker = Worker(WorkerConfig(**(settings | overrides)), registry)
        task = asyncio.create_task(worker.run(), name="worker under test")
        self.running.append((worker, task))
        return worker, task

    async def close(self) -> None:
        for worker, task in self.running:
            if not task.done():
                worker.shutdown("the test is over")
            with contextlib.suppress(Exception, asyncio.CancelledError, TimeoutError):
                async with asyncio.timeout(WAIT_S):
                    await task
            task.cancel()
        for server in self.servers:
            await server.stop(grace=None)


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    harness = Harness()
    yield harness
    await harness.close()


async def finished(task: asyncio.Task[None]) -> None:
    async with asyncio.timeout(WAIT_S):
        await task


async def test_registration_announces_queue_pool_concurrency_and_handlers(
    harness: Harness,
) -> None:
    operator = ScriptedOperator()
    port = await harness.serve(operator)
    registry = HandlerRegistry()
    registry.register(json.dumps, name="json:dumps")

    harness.start_worker(port, registry, concurrency=3)
    (request,) = await operator.registrations.wait_for()
    await operator.streams_opened.wait_for()

    assert request.worker_id == "worker-1"
    assert (request.queue, request.pool, request.concurrency) == ("test", "pool-a", 3)
    assert list(request.handlers) == ["json:dumps", GATE]
    assert list(request.running) == []
    assert request.hostname
    assert request.version
    assert operator.timeline[:2] == ["register", "stream"]


async def test_command_job_is_reported_started_then_succeeded_with_its_output(
    harness: Harness,
) -> None:
    operator = await harness.worker_connected()

    operator.assign(command_assignment("c1", [sys.executable, "-c", "print('hello')"]))
    await operator.results.wait_for()

    result = operator.result_of("c1")
    assert result.outcome == workers_pb2.OUTCOME_SUCCEEDED
    assert (result.output, result.exit_code, result.error) == ("hello\n", 0, "")
    assert result.run_time.ToTimedelta().total_seconds() > 0
    assert operator.timeline.index("started:c1") < operator.timeline.index("result:c1")


async def test_start_and_result_carry_when_the_worker_began_the_job(harness: Harness) -> None:
    operator = await harness.worker_connected()
    reported: list[workers_pb2.JobAttempt] = []

    async def keep(request: workers_pb2.StartedRequest) -> None:
        reported.extend(request.jobs)

    operator.started_hook = keep
    before = time.time_ns()
    operator.assign(command_assignment("c1", [sys.executable, "-c", "pass"]))
    await operator.results.wait_for()
    after = time.time_ns()

    (started,) = reported
    assert started.HasField("started_at")
    assert before <= started.started_at.ToNanoseconds() <= after
    assert operator.result_of("c1").job.started_at == started.started_at


async def test_a_worker_with_its_slots_taken_reports_at_once_whatever_its_linger(
    harness: Harness,
) -> None:
    operator = ScriptedOperator()
    # One slot, taken by each job until its result is answered: a report may not wait
    # for company, or the operator could give the worker nothing meanwhile. The third
    # result comes soon enough after two others to linger on an idle worker; one held for
    # the linger would outlast the wait below.
    harness.start_worker(await harness.serve(operator), concurrency=1, report_linger_s=60.0)
    await operator.streams_opened.wait_for()

    for count, job_id in enumerate(["c1", "c2", "c3"], start=1):
        operator.assign(command_assignment(job_id, [sys.executable, "-c", "pass"]))
        await operator.results.wait_count(count)

    assert [operator.result_of(job).outcome for job in ("c1", "c2", "c3")] == (
        [workers_pb2.OUTCOME_SUCCEEDED] * 3
    )


async def test_reports_answered_on_the_command_stream_settle_and_are_sent_once(
    harness: Harness,
) -> None:
    operator = ScriptedOperator()
    operator.answer_on_commands = True
    worker, task = harness.start_worker(await harness.serve(operator))
    await operator.streams_opened.wait_for()

    operator.assign(gate_job("a"), gate_job("b"))
    await operator.started.wait_count(2)
    harness.gates.open("a")
    await operator.results.wait_count(1)
    harness.gates.open("b")
    await operator.results.wait_count(2)
    # A drain waits until every report is answered: it ends only if the answers that
    # came on the command stream settled them.
    worker.drain(5.0, reason="the test is over")
    await finished(task)

    assert sorted(result.job.job_id for result in operator.results.items) == ["a", "b"]
    assert operator.batches
    assert all(asked for _, asked in operator.batches)
    assert sorted(operator.answered_on_commands.items) == sorted(i for i, _ in operator.batches)
    ids = [batch_id for batch_id, _ in operator.batches]
    assert len(set(ids)) == len(ids)
    (deregistered,) = await operator.deregistrations.wait_for()
    assert deregistered.worker_id == "worker-1"


async def test_a_draining_worker_keeps_its_stream_open_for_answers_asked_there(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    operator = ScriptedOperator()
    operator.answer_on_commands = True
    arrived, release = asyncio.Event(), asyncio.Event()

    async def hold(request: workers_pb2.ResultRequest) -> None:
        arrived.set()
        await release.wait()

    operator.result_hook = hold
    worker, task = harness.start_worker(await harness.serve(operator))
    await operator.streams_opened.wait_for()
    operator.assign(gate_job("a"))
    harness.gates.open("a")
    async with asyncio.timeout(WAIT_S):
        await arrived.wait()

    worker.drain(5.0, reason="the test is over")
    with pytest.raises(TimeoutError):  # the stream stays open while the answer is held
        await operator.streams_closed.wait_for(timeout_s=0.5)
    release.set()
    await finished(task)

    (batch_id,) = operator.answered_on_commands.items
    assert operator.batches == [(batch_id, True)]  # answered once, never sent again
    assert operator.streams_closed.items == ["worker-1"]
    assert "did not answer" not in caplog.text  # the answer was not lost with the stream


async def test_command_exiting_non_zero_is_reported_failed_with_its_exit_code(
    harness: Harness,
) -> None:
    operator = await harness.worker_connected()

    operator.assign(command_assignment("c2", [sys.executable, "-c", "raise SystemExit(7)"]))
    await operator.results.wait_for()

    result = operator.result_of("c2")
    assert result.outcome == workers_pb2.OUTCOME_FAILED
    assert (result.exit_code, result.error) == (7, "exited with code 7")


async def test_python_handler_result_is_its_json_return_value(harness: Harness) -> None:
    operator = ScriptedOperator()
    port = await harness.serve(operator)
    registry = HandlerRegistry()

    async def add(a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}

    registry.register(add, name="tests:add")
    harness.start_worker(port, registry)
    await operator.streams_opened.wait_for()

    operator.assign(python_assignment("p1", "tests:add", '{"a": 2, "b": 3}'))
    await operator.results.wait_for()

    result = operator.result_of("p1")
    assert result.outcome == workers_pb2.OUTCOME_SUCCEEDED
    assert json.loads(result.output) == {"sum": 5}
    # It ended before its Started report could leave, so the result reported both.
    assert ("p1", 1) not in operator.started.items


async def test_unknown_handler_and_malformed_arguments_fail_with_clear_errors(
    harness: Harness,
) -> None:
    operator = await harness.worker_connected()

    operator.assign(
        python_assignment("unknown", "tests:missing"),
        python_assignment("malformed", GATE, "{not json"),
        python_assignment("not-an-object", GATE, "[1, 2]"),
    )
    await operator.results.wait_count(3)

    unknown = operator.result_of("unknown")
    assert unknown.outcome == workers_pb2.OUTCOME_FAILED
    assert "'tests:missing' is not registered" in unknown.error
    malformed = operator.result_of("malformed")
    assert malformed.outcome == workers_pb2.OUTCOME_FAILED
    assert "Expecting property name" in malformed.error
    not_an_object = operator.result_of("not-an-object")
    assert not_an_object.outcome == workers_pb2.OUTCOME_FAILED
    assert "must be a JSON object" in not_an_object.error


async def test_fifty_jobs_never_run_more_than_the_concurrency_and_results_are_batched(
    harness: Harness,
) -> None:
    operator = ScriptedOperator()
    port = await harness.serve(operator)
    registry = HandlerRegistry()
    everyone_in = asyncio.Event()
    all_finished = asyncio.Event()
    running = 0
    most_running = 0
    finished_count = 0

    async def tracked(index: int) -> int:
        nonlocal running, most_running, finished_count
        running += 1
        most_running = max(most_running, running)
        if running == 8:
            everyone_in.set()
        await everyone_in.wait()
        await asyncio.sleep(0)  # a yield, so that overlapping attempts overlap here
        running -= 1
        finished_count += 1
        if finished_count == 50:
            all_finished.set()
        return index

    async def hold_first_call(request: workers_pb2.ResultRequest) -> None:
        # While the first call is in flight, the other results pile up in the worker.
        if operator.result_calls.items == []:
            await all_finished.wait()

    operator.result_hook = hold_first_call
    registry.register(tracked, name="tests:tracked")
    harness.start_worker(port, registry, concurrency=8)
    await operator.streams_opened.wait_for()

    operator.assign(
        *(
            python_assignment(f"job-{i}", "tests:tracked", json.dumps({"index": i}))
            for i in range(50)
        )
    )
    await operator.results.wait_count(50)

    assert most_running == 8
    assert sorted(int(r.output) for r in operator.results.items) == list(range(50))
    assert sum(operator.result_calls.items) == 50
    assert len(operator.result_calls.items) < 50
    assert max(operator.result_calls.items[1:]) > 1  # what piled up went in few calls
    assert operator.most_results_in_flight <= MAX_CALLS_IN_FLIGHT
    assert len(operator.started_calls.items) < 50
    # Attempts that ended while their Started still waited reported only their result.
    assert len(operator.started.items) <= 50


async def test_attempt_ending_before_its_started_left_reports_only_its_result(
    harness: Harness,
) -> None:
    operator = ScriptedOperator()
    port = await harness.serve(operator)
    registry = HandlerRegistry()
    release_started = asyncio.Event()

    async def quick() -> str:
        await asyncio.sleep(0)  # a second step, so its start is submitted (then withdrawn)
        return "quick"

    held: Recorded[str] = Recorded()

    async def hold_the_first_started_calls(request: workers_pb2.StartedRequest) -> None:
        if len(held.items) < MAX_CALLS_IN_FLIGHT:
            held.add(request.jobs[0].job_id)
            await release_started.wait()

    operator.started_hook = hold_the_first_started_calls
    registry.register(quick, name="tests:quick")
    harness.start_worker(port, registry)
    await operator.streams_opened.wait_for()

    # Every call the worker may have out carries a slow job's Started, and is held, so
    # the quick job's Started has to wait.
    slow = [f"slow-{index}" for index in range(MAX_CALLS_IN_FLIGHT)]
    for index, name in enumerate(slow):
        operator.assign(gate_job(name))
        await held.wait_count(index + 1)
    operator.assign(python_assignment("quick", "tests:quick"))
    await operator.results.wait_for()
    release_started.set()
    for name in slow:
        harness.gates.open(name)
    await operator.results.wait_count(len(slow) + 1)

    assert operator.result_of("quick").output == '"quick"'
    assert sorted(operator.started.items) == [(name, 1) for name in slow]
    for name in slow:
        assert operator.timeline.index(f"started:{name}") < operator.timeline.index(
            f"result:{name}"
        )


async def test_cancel_command_stops_a_running_command_and_reports_cancelled(
    harness: Harness,
) -> None:
    operator = await harness.worker_connected()

    operator.assign(
        command_assignment("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"])
    )
    await operator.started.wait_for()
    operator.send(
        workers_pb2.WorkerCommand(
            cancel=workers_pb2.CancelJobs(
                jobs=[workers_pb2.JobAttempt(job_id="sleeper", attempt=1)], reason="by a person"
            )
        )
    )
    await operator.results.wait_for()

    result = operator.result_of("sleeper")
    assert result.outcome == workers_pb2.OUTCOME_CANCELLED
    assert result.error == "cancelled: by a person"
    assert result.run_time.ToTimedelta().total_seconds() < 30


async def test_heartbeat_stop_list_cancels_the_attempt(harness: Harness) -> None:
    operator = ScriptedOperator(heartbeat_interval_s=0.05)
    operator.stop_on_heartbeat = {("disowned", 1)}
    port = await harness.serve(operator)
    harness.start_worker(port, concurrency=4)
    await operator.streams_opened.wait_for()

    operator.assign(gate_job("disowned"))
    await operator.results.wait_for()

    result = operator.result_of("disowned")
    assert result.outcome == workers_pb2.OUTCOME_CANCELLED
    assert "no longer holds this attempt" in result.error
    assert harness.gates.cancelled.items == ["disowned"]
    beat = next(b for b in operator.heartbeats.items if b.running)
    assert [key_of(job) for job in beat.running] == [("disowned", 1)]
    assert beat.free_slots == 3


async def test_restarted_operator_gets_held_attempts_and_the_unsent_result_exactly_once(
    harness: Harness,
) -> None:
    first = ScriptedOperator(operator_id="first")
    result_call_arrived = asyncio.Event()

    async def never_answer(request: workers_pb2.ResultRequest) -> None:
        result_call_arrived.set()
        await asyncio.Event().wait()  # the operator dies before it answers

    first.result_hook = never_answer
    port = await harness.serve(first)
    worker, _ = harness.start_worker(port)
    await first.streams_opened.wait_for()
    first.assign(gate_job("long"), gate_job("short"))
    await first.started.wait_count(2)

    harness.gates.open("short")
    await asyncio.wait_for(result_call_arrived.wait(), WAIT_S)
    await harness.servers[0].stop(grace=None)

    second = ScriptedOperator(operator_id="second")
    await harness.serve(second, port)
    (registration,) = await second.registrations.wait_for()
    assert {key_of(job) for job in registration.running} == {("long", 1), ("short", 1)}
    await second.streams_opened.wait_for()
    assert second.timeline.index("result:short") < second.timeline.index("stream")
    assert worker.registered

    harness.gates.open("long")
    await second.results.wait_count(2)
    assert first.results.items == []
    assert [r.job.job_id for r in second.results.items] == ["short", "long"]
    assert second.result_of("short").output == '"short done"'
    assert second.started.items == []  # both starts were answered by the first operator
    assert harness.gates.cancelled.items == []


async def test_a_report_batch_refused_for_a_forgotten_worker_is_resent_after_registering(
    harness: Harness,
) -> None:
    operator = await harness.worker_connected()
    # As an operator that restarted and forgot the worker answers: NOT_FOUND.
    operator.refuse_next_report = grpc.StatusCode.NOT_FOUND

    operator.assign(gate_job("job"))
    harness.gates.open("job")
    await operator.results.wait_for()

    assert len(operator.registrations.items) == 2
    assert len(operator.report_streams.items) == 2  # a new session, a new stream
    # Recorded once; its start went with it or before it (the refused batch was resent).
    assert [result.job.job_id for result in operator.results.items] == ["job"]


async def test_drain_finishes_running_jobs_cancels_the_stream_and_deregisters(
    harness: Harness,
) -> None:
    operator = ScriptedOperator()
    port = await harness.serve(operator)
    worker, task = harness.start_worker(port)
    await operator.streams_opened.wait_for()
    operator.assign(gate_job("running"))
    await harness.gates.entered.wait_for()

    worker.drain(grace_s=WAIT_S)
    await operator.streams_closed.wait_for()
    assert worker.free_slots() == 0
    assert operator.deregistrations.items == []

    harness.gates.open("running")
    await finished(task)

    assert operator.result_of("running").outcome == workers_pb2.OUTCOME_SUCCEEDED
    (deregistration,) = operator.deregistrations.items
    assert deregistration.worker_id == "worker-1"
    assert operator.timeline[-2:] == ["result:running", "deregister"]
    assert operator.timeline.count("stream") == 1


async def test_drain_command_with_short_grace_stops_the_job_and_reports_it_failed(
    harness: Harness,
) -> None:
    operator = ScriptedOperator()
    port = await harness.serve(operator)
    _, task = harness.start_worker(port)
    await operator.streams_opened.wait_for()
    operator.assign(gate_job("stuck"))
    await harness.gates.entered.wait_for()

    operator.send(workers_pb2.WorkerCommand(drain=workers_pb2.Drain(grace=duration(0.1))))
    await finished(task)

    result = operator.result_of("stuck")
    assert result.outcome == workers_pb2.OUTCOME_FAILED
    assert result.error == "stopped: the worker drained and its grace of 0.1 s ran out"
    assert harness.gates.cancelled.items == ["stuck"]
    assert operator.timeline[-1] == "deregister"


async def test_shutdown_command_stops_every_job_reports_them_and_deregisters(
    harness: Harness,
) -> None:
    operator = ScriptedOperator()
    port = await harness.serve(operator)
    _, task = harness.start_worker(port)
    await operator.streams_opened.wait_for()
    operator.assign(
        gate_job("one"),
        command_assignment("two", [sys.executable, "-c", "import time; time.sleep(60)"]),
    )
    await operator.started.wait_count(2)

    operator.send(workers_pb2.WorkerCommand(shutdown=workers_pb2.Shutdown(reason="upgrade")))
    await finished(task)

    for job_id in ("one", "two"):
        result = operator.result_of(job_id)
        assert result.outcome == workers_pb2.OUTCOME_FAILED
        assert result.error == "stopped: the operator shut this worker down: upgrade"
    (deregistration,) = operator.deregistrations.items
    assert "upgrade" in deregistration.reason


async def test_refused_start_stops_the_attempt_and_reports_no_result(harness: Harness) -> None:
    operator = ScriptedOperator()
    operator.refuse_started = {("stale", 1)}
    port = await harness.serve(operator)
    worker, task = harness.start_worker(port)
    await operator.streams_opened.wait_for()

    operator.assign(gate_job("stale"))
    await harness.gates.cancelled.wait_for()
    worker.drain(grace_s=WAIT_S)
    await finished(task)

    assert operator.results.items == []
    assert operator.started.items == []
    assert operator.deregistrations.items


async def test_operator_refusing_the_registration_for_good_ends_the_worker(
    harness: Harness,
) -> None:
    class Refusing(ScriptedOperator):
        async def Register(
            self, request: workers_pb2.RegisterRequest, context: grpc.aio.ServicerContext[Any, Any]
        ) -> workers_pb2.RegisterResponse:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unknown queue 'test'")
            raise AssertionError("abort returns only by raising")

    port = await harness.serve(Refusing())
    _, task = harness.start_worker(port)

    with pytest.raises(PermanentError, match="unknown queue 'test'"):
        await finished(task)


def test_backoff_doubles_from_its_start_to_its_cap_with_jitter() -> None:
    policy = BackoffPolicy(initial_s=0.1, cap_s=5.0)

    for failures, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (6, 3.2), (7, 5.0), (30, 5.0)]:
        delays = [policy.delay_s(failures) for _ in range(200)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert len(set(delays)) > 1
