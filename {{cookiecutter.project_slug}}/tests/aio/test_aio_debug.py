"""Seeing inside a running or hung process: task dumps, signal dumps, loop lag.

Tests marked ``allow_blocking`` block an event loop on purpose (that is what they demonstrate).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest

from {{ cookiecutter.package_name }}.aio.debug import (
    LoopLagMonitor,
    TaskInfo,
    dump_tasks,
    enable_asyncio_debug,
    format_task_dump,
    install_signal_dumps,
    task_info,
)

LOGGER_NAME = "tests.aio.debug"
# The child process of the SIGUSR2 test imports the same module: where it is, what it is called.
DEBUG_MODULE = dump_tasks.__module__
SRC_DIR = str(Path(inspect.getfile(dump_tasks)).resolve().parents[2])


async def _eventually(condition: Callable[[], bool], within: float = 2.0) -> None:
    """Poll a plain condition (there is no event to wait on) for at most ``within`` seconds."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - polling state that has no event
            await asyncio.sleep(0.01)


async def innermost(event: asyncio.Event) -> None:
    await event.wait()


async def middle(event: asyncio.Event) -> None:
    await innermost(event)


async def outer(event: asyncio.Event) -> None:
    await middle(event)


async def waits_for(task: asyncio.Task[None]) -> None:
    await task


@pytest.fixture
def stack_file() -> Iterator[IO[str]]:
    """A real file for faulthandler (it writes to a file descriptor, not a Python stream)."""
    with tempfile.TemporaryFile("w+") as file:
        yield file


# --- task dumps -------------------------------------------------------------------------------


async def test_dump_shows_each_named_task_with_its_chain_of_awaits() -> None:
    event = asyncio.Event()
    target = asyncio.create_task(outer(event), name="dump-demo")
    waiter = asyncio.create_task(waits_for(target), name="dump-waiter")
    await asyncio.sleep(0)
    try:
        infos = {info["name"]: info for info in dump_tasks()}
        demo = infos["dump-demo"]
        assert demo["state"] == "pending"
        assert demo["coroutine"] == "outer"
        functions = [frame["function"] for frame in demo["awaiting"]]
        assert functions[:3] == ["outer", "middle", "innermost"]  # outermost first
        assert all(frame["line"] > 0 and frame["file"] for frame in demo["awaiting"])
        assert infos["dump-waiter"]["waiting_on"] == "task 'dump-demo'"
        if hasattr(asyncio, "format_call_graph"):  # Python 3.14+
            assert demo["call_graph"]
        else:
            assert demo["call_graph"] is None
        text = format_task_dump(list(infos.values()))
        assert "Task 'dump-demo' [pending]" in text
        assert "in innermost" in text
        assert "waiting on: task 'dump-demo'" in text
    finally:
        event.set()
        await asyncio.wait([target, waiter])


@pytest.mark.pitfall
async def test_pitfall_task_print_stack_shows_one_frame() -> None:
    event = asyncio.Event()
    target = asyncio.create_task(outer(event), name="one-frame")
    await asyncio.sleep(0)
    try:
        # A suspended coroutine's frame has no f_back: the stack asyncio gives stops at once.
        assert [frame.f_code.co_name for frame in target.get_stack()] == ["outer"]
    finally:
        event.set()
        await target


def _dump_from_a_debug_loop() -> TaskInfo:
    async def parked() -> None:
        await asyncio.sleep(5)

    async def main() -> TaskInfo:
        task = asyncio.create_task(parked(), name="created-in-debug-mode")
        await asyncio.sleep(0)
        [info] = [info for info in dump_tasks() if info["name"] == "created-in-debug-mode"]
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return info

    return asyncio.run(main(), debug=True)


async def test_dump_shows_where_a_task_was_created_in_debug_mode() -> None:
    info = await asyncio.to_thread(_dump_from_a_debug_loop)
    assert "main" in [frame["function"] for frame in info["created_at"]]


async def test_a_finished_task_is_described_by_its_outcome() -> None:
    async def boom() -> None:
        raise ValueError("boom")

    task = asyncio.create_task(boom(), name="failed-task")
    await asyncio.wait([task])
    info = task_info(task)
    assert info["state"] == "failed"
    assert info["error"] == "ValueError('boom')"
    assert info["awaiting"] == []


# --- signal dumps ------------------------------------------------------------------------------


async def test_sigusr1_logs_the_task_dump(
    caplog: pytest.LogCaptureFixture, stack_file: IO[str]
) -> None:
    event = asyncio.Event()
    parked = asyncio.create_task(outer(event), name="visible-in-sigusr1-dump")
    uninstall = install_signal_dumps(
        asyncio.get_running_loop(), logging.getLogger(LOGGER_NAME), file=stack_file
    )
    try:
        with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
            os.kill(os.getpid(), signal.SIGUSR1)
            await _eventually(lambda: "visible-in-sigusr1-dump" in caplog.text)
        assert "asyncio task dump" in caplog.text
        assert "in innermost" in caplog.text
    finally:
        uninstall()
        event.set()
        await parked


@pytest.mark.pitfall
@pytest.mark.allow_blocking
async def test_pitfall_a_loop_signal_handler_cannot_dump_while_the_loop_is_blocked(
    caplog: pytest.LogCaptureFixture, stack_file: IO[str]
) -> None:
    uninstall = install_signal_dumps(
        asyncio.get_running_loop(), logging.getLogger(LOGGER_NAME), file=stack_file
    )
    try:
        with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
            os.kill(os.getpid(), signal.SIGUSR1)
            time.sleep(0.3)  # noqa: ASYNC251 - a hung loop, on purpose
            assert "asyncio task dump" not in caplog.text  # nothing while it was blocked
            await _eventually(lambda: "asyncio task dump" in caplog.text)  # only afterwards
    finally:
        uninstall()


_BLOCKED_CHILD = """
import asyncio, importlib, logging, sys, time
debug = importlib.import_module(sys.argv[1])

def blocking_call_in_the_loop():
    print("blocking", flush=True)
    time.sleep(10)

async def main():
    debug.install_signal_dumps(asyncio.get_running_loop(), logging.getLogger("child"))
    blocking_call_in_the_loop()

asyncio.run(main())
"""


async def test_sigusr2_dumps_every_thread_while_the_loop_is_blocked() -> None:
    path = os.pathsep.join(filter(None, [SRC_DIR, os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        _BLOCKED_CHILD,
        DEBUG_MODULE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    assert child.stdout is not None
    assert child.stderr is not None
    dump = b""
    try:
        async with asyncio.timeout(10):
            assert await child.stdout.readline() == b"blocking\n"
            child.send_signal(signal.SIGUSR2)
            while b"in main" not in dump:  # the frame below the blocking one
                chunk = await child.stderr.read(4096)
                if not chunk:
                    break
                dump += chunk
        assert child.returncode is None  # still blocked in time.sleep: it dumped, not died
    finally:
        if child.returncode is None:
            child.kill()
        await child.wait()
    text = dump.decode(errors="replace")
    assert "most recent call first" in text
    assert "in blocking_call_in_the_loop" in text
    assert "in main" in text


# --- loop lag ----------------------------------------------------------------------------------


@pytest.mark.allow_blocking
async def test_loop_lag_monitor_catches_a_blocking_call(caplog: pytest.LogCaptureFixture) -> None:
    monitor = LoopLagMonitor(interval=0.02, threshold=0.2, logger=logging.getLogger(LOGGER_NAME))
    with caplog.at_level(logging.WARNING, logger=LOGGER_NAME):
        async with monitor:
            assert monitor.running
            await asyncio.sleep(0.1)
            time.sleep(0.3)  # noqa: ASYNC251 - the blocking call the monitor must catch
            await asyncio.sleep(0.1)  # the late tick runs as soon as the loop is free
    assert not monitor.running
    assert monitor.peak_lag >= 0.25
    assert "event loop lag" in caplog.text


def _block_a_loop(debug: bool) -> None:
    async def blocks() -> None:
        time.sleep(0.2)  # noqa: ASYNC251 - deliberately blocking

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if debug:
            enable_asyncio_debug(loop, slow_callback_seconds=0.05)
        else:
            loop.slow_callback_duration = 0.05
        blocker = asyncio.create_task(blocks(), name="blocker")
        await blocker

    asyncio.run(main(), debug=False)


@pytest.mark.allow_blocking
async def test_debug_mode_reports_a_slow_callback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        await asyncio.to_thread(_block_a_loop, True)
    assert "blocker" in caplog.text
    assert "took" in caplog.text


@pytest.mark.pitfall
@pytest.mark.allow_blocking
async def test_pitfall_slow_callback_duration_is_silent_without_debug_mode(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="asyncio"):
        await asyncio.to_thread(_block_a_loop, False)
    assert "took" not in caplog.text  # the same 0.2 s block, and not a word
