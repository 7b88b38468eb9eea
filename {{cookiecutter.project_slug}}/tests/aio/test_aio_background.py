"""Fire-and-forget and shielded work under a supervisor, and what happens without one."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar

import pytest

from {{ cookiecutter.package_name }}.aio.background import (
    DrainSummary,
    SupervisorClosedError,
    TaskSupervisor,
)

request_id: ContextVar[str | None] = ContextVar("request_id", default=None)

LOGGER_NAME = "tests.aio.background"


class ContextAtEmit(logging.Handler):
    """Records each message with the request id visible when the record is emitted.

    That is what a JSON log formatter reading a context variable would print.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.seen: list[tuple[str, str | None]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append((record.getMessage(), request_id.get()))


@contextlib.contextmanager
def watching(logger_name: str) -> Iterator[ContextAtEmit]:
    handler = ContextAtEmit()
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


async def _wait_forever_on_a_forgotten_future() -> None:
    # Waits on a future that only this coroutine references, like a read on a connection
    # that was dropped: nothing on the loop keeps the task alive.
    await asyncio.get_running_loop().create_future()


async def _eventually(condition: Callable[[], bool], within: float = 2.0) -> None:
    """Poll a plain condition (there is no event to wait on) for at most ``within`` seconds."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - polling state that has no event
            await asyncio.sleep(0.01)


# --- strong references ------------------------------------------------------------------------


async def test_a_tracked_task_survives_garbage_collection() -> None:
    supervisor = TaskSupervisor()
    task_ref = weakref.ref(supervisor.spawn(_wait_forever_on_a_forgotten_future(), name="tracked"))
    await asyncio.sleep(0)  # let it start and suspend
    gc.collect()
    assert task_ref() is not None
    assert supervisor.pending == 1
    summary = await supervisor.drain(grace=0.05)
    assert summary.cancelled_names == ("tracked",)


@pytest.mark.pitfall
async def test_pitfall_an_untracked_task_is_destroyed_while_pending(
    caplog: pytest.LogCaptureFixture,
) -> None:
    task_ref = weakref.ref(asyncio.create_task(_wait_forever_on_a_forgotten_future()))
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        gc.collect()
    assert task_ref() is None  # the work is gone, it will never finish nor fail
    assert "Task was destroyed but it is pending" in caplog.text


# --- failures are logged at once, with the spawner's context ---------------------------------


async def test_a_failure_is_logged_at_once_with_task_name_and_request_id(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = TaskSupervisor(logging.getLogger(LOGGER_NAME))

    async def notify() -> None:
        await asyncio.sleep(0.01)
        raise ConnectionError("notifier down")

    async def handle_request() -> None:
        request_id.set("req-42")
        supervisor.spawn(notify(), name="notify:order-7")

    with watching(LOGGER_NAME) as emitted, caplog.at_level(logging.ERROR, logger=LOGGER_NAME):
        request = asyncio.create_task(handle_request())  # the request's own task and context
        await request
        assert request_id.get() is None  # the test's context never had it
        await _eventually(lambda: supervisor.pending == 0)  # nobody awaits the task

    [record] = [r for r in caplog.records if r.name == LOGGER_NAME]
    assert record.levelno == logging.ERROR
    assert "notify:order-7" in record.getMessage()
    assert record.task == "notify:order-7"  # type: ignore[attr-defined]
    assert record.context["request_id"] == "req-42"  # type: ignore[attr-defined]
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], ConnectionError)
    # The log call ran in the spawner's context: a formatter reading the variable finds it.
    assert [request for _, request in emitted.seen] == ["req-42"]
    await supervisor.drain(grace=0.1)


@pytest.mark.pitfall
async def test_pitfall_an_untracked_failure_is_silent_until_garbage_collection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def notify() -> None:
        raise ConnectionError("notifier down")

    tasks: list[asyncio.Task[None]] = []

    async def handle_request() -> None:
        request_id.set("req-42")
        tasks.append(asyncio.create_task(notify()))

    with watching("asyncio") as emitted, caplog.at_level(logging.ERROR, logger="asyncio"):
        request = asyncio.create_task(handle_request())
        await request
        await _eventually(tasks[0].done)
        await asyncio.sleep(0.05)
        assert "never retrieved" not in caplog.text  # it failed, and nothing was said
        tasks.clear()
        gc.collect()
    # Only garbage collection reports it, whenever that happens, without the request's id.
    assert "Task exception was never retrieved" in caplog.text
    assert [request for message, request in emitted.seen if "never retrieved" in message] == [None]


# --- drain -------------------------------------------------------------------------------------


async def test_drain_waits_for_work_that_finishes_within_the_grace_period() -> None:
    supervisor = TaskSupervisor()
    finished: list[int] = []

    async def work(number: int) -> None:
        await asyncio.sleep(0.1)
        finished.append(number)

    for number in range(3):
        supervisor.spawn(work(number), name=f"work:{number}")
    assert supervisor.pending == 3
    started = time.monotonic()
    summary = await supervisor.drain(grace=2.0)
    assert time.monotonic() - started < 1.5  # returned when the work was done, not at grace
    assert summary == DrainSummary(drained=3, cancelled=0)
    assert sorted(finished) == [0, 1, 2]
    assert supervisor.pending == 0


async def test_drain_cancels_and_logs_what_is_left_after_the_grace_period(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = TaskSupervisor(logging.getLogger(LOGGER_NAME))
    observed: list[str] = []

    async def slow_report() -> None:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            observed.append("report cancelled")
            raise

    supervisor.spawn(slow_report(), name="report:slow")
    supervisor.spawn(asyncio.sleep(0.01), name="quick")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        summary = await supervisor.drain(grace=0.2)
    assert time.monotonic() - started < 1.5
    assert summary == DrainSummary(drained=1, cancelled=1, cancelled_names=("report:slow",))
    assert observed == ["report cancelled"]
    assert "report:slow" in caplog.text
    assert supervisor.pending == 0


async def test_drain_reports_a_task_that_ignores_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = TaskSupervisor(logging.getLogger(LOGGER_NAME))

    async def stubborn() -> None:
        with contextlib.suppress(asyncio.CancelledError):  # deliberately wrong: swallows it
            await asyncio.sleep(5)
        await asyncio.sleep(0.3)

    task = supervisor.spawn(stubborn(), name="stubborn")
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        summary = await supervisor.drain(grace=0.05, cancel_wait=0.05)
    assert summary.stuck == ("stubborn",)
    assert "ignored its cancellation" in caplog.text
    await task  # let it end before the test does


async def test_no_new_work_is_accepted_once_draining() -> None:
    supervisor = TaskSupervisor()
    await supervisor.drain(grace=0.1)
    assert supervisor.closed
    with pytest.raises(SupervisorClosedError, match="late"):
        supervisor.spawn(asyncio.sleep(0), name="late")
    with pytest.raises(SupervisorClosedError):
        await supervisor.run_shielded(asyncio.sleep(0), name="late write")


# --- shielded critical work ----------------------------------------------------------------------


async def test_shielded_work_completes_although_the_caller_is_cancelled() -> None:
    supervisor = TaskSupervisor()
    writing, database_answers = asyncio.Event(), asyncio.Event()
    written: list[str] = []

    async def write_order() -> int:
        writing.set()
        await database_answers.wait()  # the insert is on its way to the database
        written.append("order 7")
        return 7

    async def handle_request() -> int:
        return await supervisor.run_shielded(write_order(), name="write:order-7")

    request = asyncio.create_task(handle_request())
    await writing.wait()
    request.cancel()  # deadline or shutdown
    with pytest.raises(asyncio.CancelledError):
        await request  # the caller learns of its cancellation at once
    assert written == []
    assert supervisor.pending == 1  # while the write goes on, tracked
    database_answers.set()
    summary = await supervisor.drain(grace=2.0)
    assert written == ["order 7"]
    assert summary.drained == 1


async def test_shielded_work_returns_or_raises_to_a_caller_that_stays(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = TaskSupervisor(logging.getLogger(LOGGER_NAME))

    async def write(fail: bool) -> int:
        await asyncio.sleep(0.01)
        if fail:
            raise ValueError("constraint violated")
        return 3

    with caplog.at_level(logging.ERROR, logger=LOGGER_NAME):
        assert await supervisor.run_shielded(write(fail=False), name="write:ok") == 3
        with pytest.raises(ValueError, match="constraint violated"):
            await supervisor.run_shielded(write(fail=True), name="write:bad")
        await asyncio.sleep(0.02)
    assert caplog.records == []  # the caller got the error; it is not logged twice
    await supervisor.drain(grace=0.1)


async def test_a_shielded_failure_after_the_caller_left_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    supervisor = TaskSupervisor(logging.getLogger(LOGGER_NAME))

    writing, database_answers = asyncio.Event(), asyncio.Event()

    async def write() -> None:
        writing.set()
        await database_answers.wait()
        raise ValueError("constraint violated")

    request = asyncio.create_task(supervisor.run_shielded(write(), name="write:order-8"))
    await writing.wait()
    request.cancel()
    with pytest.raises(asyncio.CancelledError):
        await request
    database_answers.set()  # the write fails after its caller has left
    with caplog.at_level(logging.ERROR, logger=LOGGER_NAME):
        await supervisor.drain(grace=2.0)
    assert "write:order-8" in caplog.text
    assert "constraint violated" in caplog.text


@pytest.mark.pitfall
async def test_pitfall_unshielded_work_is_lost_when_the_caller_is_cancelled() -> None:
    # The usual handler: two steps that belong together, awaited in the request itself, with
    # the request deadline around it. The deadline fires between the steps.
    stock = {"pens": 10}
    orders: list[str] = []
    charged = asyncio.Event()
    payment_service = asyncio.Event()  # never answers in time

    async def place_order() -> None:
        stock["pens"] -= 1  # step 1 done
        charged.set()
        await payment_service.wait()
        orders.append("3 pens")  # step 2: never reached

    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):  # the request deadline
            await place_order()
    payment_service.set()  # the answer arrives, for nobody

    # The request left the world half-changed: the stock went down, the order does not exist,
    # and nothing will ever finish the work.
    assert charged.is_set()
    assert stock == {"pens": 9}
    assert orders == []


def _serve_one_cancelled_request(supervised: bool) -> list[str]:
    """A whole service life in a fresh loop: one request, cancelled mid-write, then shutdown."""
    events: list[str] = []
    writing = asyncio.Event()

    async def write_order() -> None:
        writing.set()
        try:
            await asyncio.sleep(0.2)  # the insert's round trip
        except asyncio.CancelledError:
            events.append("write cancelled")
            raise
        events.append("order written")

    async def main() -> None:
        supervisor = TaskSupervisor()

        async def handle_request() -> None:
            if supervised:
                await supervisor.run_shielded(write_order(), name="write:order")
            else:
                await asyncio.shield(write_order())

        request = asyncio.create_task(handle_request())
        await writing.wait()
        request.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await request
        if supervised:
            await supervisor.drain(grace=2.0)  # what the lifespan does at shutdown
        # main returns: asyncio.run cancels every task still pending, then closes the loop.

    asyncio.run(main())
    return events


async def test_drained_shielded_work_survives_the_loop_shutting_down() -> None:
    assert await asyncio.to_thread(_serve_one_cancelled_request, True) == ["order written"]


@pytest.mark.pitfall
async def test_pitfall_shielded_but_undrained_work_is_cancelled_by_asyncio_run() -> None:
    # shield protects from the caller's cancellation only; asyncio.run's shutdown cancels it.
    assert await asyncio.to_thread(_serve_one_cancelled_request, False) == ["write cancelled"]


async def test_work_started_by_tracked_work_while_draining_is_drained_too() -> None:
    supervisor = TaskSupervisor()
    finished: list[str] = []

    async def follow_up() -> None:
        await asyncio.sleep(0.1)
        finished.append("follow-up")

    async def write_then_follow_up() -> None:
        await asyncio.sleep(0.1)
        finished.append("write")
        # By now drain has started: a tracked task may still hand on its work.
        supervisor.spawn(follow_up(), name="follow-up")

    supervisor.spawn(write_then_follow_up(), name="write")
    summary = await supervisor.drain(grace=2.0)

    assert finished == ["write", "follow-up"]
    assert (summary.drained, summary.cancelled) == (2, 0)
