"""The lint gates that keep cancellation and blocking mistakes out are really switched on.

Each snippet below is a small file with one classic asyncio mistake. The test writes it to a
temporary folder and runs the project's own tools on it with the project's own configuration
(``pyproject.toml`` for ruff, ``.flake8`` for flake8-async), then checks that the rule meant to
catch that mistake fires. If someone drops a rule from the configuration, or a tool upgrade
renames one, a test here fails instead of the mistake slipping into production.

Why two tools: ruff covers most of flake8-async, but not ASYNC103/104 (a handler that catches
the cancellation and does not re-raise it) nor ASYNC300; flake8 runs just those.

At the end, the same mistake at run time: a swallowed cancellation defeats ``asyncio.timeout``.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .conftest import PROJECT_ROOT

FLAKE8_LINE = re.compile(r"^(?P<path>.+?):\d+:\d+: (?P<code>[A-Z]+\d+) ")

# (rule, snippet): every snippet breaks the rule once.
FLAKE8_CASES = {
    # Catches the cancellation, cleans up, and carries on as if nothing was asked.
    "ASYNC103": """
        import asyncio


        async def fetch(connection: asyncio.StreamWriter) -> None:
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                connection.close()
        """,
    # The same with a bare except or BaseException: they catch CancelledError too.
    "ASYNC103-base-exception": """
        import asyncio
        import logging


        async def fetch() -> None:
            try:
                await asyncio.sleep(1)
            except BaseException:
                logging.getLogger(__name__).exception("fetch failed")
        """,
    # Turns the cancellation into a normal return value.
    "ASYNC104": """
        import asyncio


        async def fetch() -> str | None:
            try:
                await asyncio.sleep(1)
            except asyncio.CancelledError:
                return None
            return "fetched"
        """,
    # A task nobody holds: it can be garbage-collected mid-flight and its error is never seen.
    "ASYNC300": """
        import asyncio


        async def notify() -> None:
            await asyncio.sleep(0)


        async def handler() -> None:
            asyncio.create_task(notify())
        """,
}

RUFF_CASES = {
    # `return` in `finally` discards the exception in flight, a CancelledError included.
    "B012": """
        import asyncio


        async def fetch() -> str:
            try:
                await asyncio.sleep(1)
            finally:
                return "done"
        """,
    # A blind except that logs without the traceback and goes on.
    "BLE001": """
        import asyncio
        import logging


        async def fetch() -> None:
            try:
                await asyncio.sleep(1)
            except Exception:
                logging.getLogger(__name__).warning("fetch failed")
        """,
    "RUF006": """
        import asyncio


        async def notify() -> None:
            await asyncio.sleep(0)


        async def handler() -> None:
            asyncio.create_task(notify())
        """,
    # A blocking sleep stops the whole event loop, and every request with it.
    "ASYNC251": """
        import time


        async def handler() -> None:
            time.sleep(0.1)
        """,
    # Polling a flag with sleep: late by up to one period, and busy for nothing; use an Event.
    "ASYNC110": """
        import asyncio


        async def wait_until_ready(ready: list[bool]) -> None:
            while not ready:
                await asyncio.sleep(0.1)
        """,
}

# The right way to do each of the above: both tools must stay silent.
CORRECT = """
    import asyncio
    import logging

    logger = logging.getLogger(__name__)
    background: set[asyncio.Task[None]] = set()


    async def notify() -> None:
        await asyncio.sleep(0)


    async def fetch(connection: asyncio.StreamWriter) -> str:
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:
            connection.close()  # clean up, then let the cancellation go on
            raise
        except Exception:
            logger.exception("fetch failed")
            raise
        finally:
            logger.info("fetch over")
        return "fetched"


    async def handler(ready: asyncio.Event) -> None:
        task = asyncio.create_task(notify())
        background.add(task)
        task.add_done_callback(background.discard)
        await ready.wait()
        await asyncio.sleep(0.1)
    """


DELIBERATE = """
    import asyncio


    async def fetch(connection: asyncio.StreamWriter) -> None:
        try:
            await asyncio.sleep(1)
        except asyncio.CancelledError:  # noqa: ASYNC103 - a reason given here
            connection.close()
    """

Findings = dict[str, list[str]]  # file name -> rule codes reported


def _file_name(case: str) -> str:
    return f"{case.replace('-', '_').lower()}.py"


def _run(command: list[str], folder: Path) -> str:
    result = subprocess.run(  # noqa: S603 - our own interpreter running our own linters
        [sys.executable, "-m", *command],
        capture_output=True,
        text=True,
        cwd=folder,
        check=False,
    )
    assert result.returncode in {0, 1}, result.stderr  # 1 means "found something"
    return result.stdout


@pytest.fixture(scope="module")
def findings(tmp_path_factory: pytest.TempPathFactory) -> tuple[Findings, Findings]:
    """Write every snippet, run each tool once over all of them (flake8 takes a second or two
    to start), and return what flake8 and ruff reported, by file."""
    folder = tmp_path_factory.mktemp("lint_snippets")
    cases = {**FLAKE8_CASES, **RUFF_CASES, "correct": CORRECT, "deliberate": DELIBERATE}
    for case, source in cases.items():
        (folder / _file_name(case)).write_text(textwrap.dedent(source).lstrip())
    flake8: Findings = {_file_name(case): [] for case in cases}
    ruff: Findings = {_file_name(case): [] for case in cases}

    output = _run(["flake8", "--config", str(PROJECT_ROOT / ".flake8"), "."], folder)
    for line in output.splitlines():
        if match := FLAKE8_LINE.match(line):
            flake8[Path(match["path"]).name].append(match["code"])
    output = _run(
        ["ruff", "check", "--no-cache", "--output-format", "json",
         "--config", str(PROJECT_ROOT / "pyproject.toml"), "."],
        folder,
    )  # fmt: skip
    for finding in json.loads(output):
        ruff[Path(finding["filename"]).name].append(finding["code"])
    return flake8, ruff


@pytest.mark.parametrize("rule", FLAKE8_CASES)
def test_flake8_async_catches(findings: tuple[Findings, Findings], rule: str) -> None:
    flake8, _ = findings
    assert rule.split("-", maxsplit=1)[0] in flake8[_file_name(rule)]


@pytest.mark.parametrize("rule", RUFF_CASES)
def test_ruff_catches(findings: tuple[Findings, Findings], rule: str) -> None:
    _, ruff = findings
    assert rule in ruff[_file_name(rule)]


def test_correct_cancellation_handling_passes_both_gates(
    findings: tuple[Findings, Findings],
) -> None:
    flake8, ruff = findings
    assert flake8[_file_name("correct")] == []
    assert ruff[_file_name("correct")] == []


def test_noqa_for_the_flake8_only_rules_is_honoured_by_flake8_and_accepted_by_ruff(
    findings: tuple[Findings, Findings],
) -> None:
    # A deliberate exception to ASYNC103 is marked with a noqa comment for that code: flake8
    # honours it, and ruff must not reject the code it does not know (RUF102); the `external`
    # list in pyproject.toml tells ruff the code belongs to another tool.
    flake8, ruff = findings
    assert flake8[_file_name("deliberate")] == []
    assert ruff[_file_name("deliberate")] == []


# --- the same mistake at run time -------------------------------------------------------------
# (tests/aio/test_aio_deadlines.py shows `contextlib.suppress(CancelledError)`; these show the
# handler that does it right and the `except BaseException` that does it wrong.)


async def test_a_handler_that_re_raises_keeps_the_deadline() -> None:
    cleaned_up = False

    async def fetch() -> None:
        nonlocal cleaned_up
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cleaned_up = True
            raise

    started = time.monotonic()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.05):
            await fetch()
    assert cleaned_up
    assert time.monotonic() - started < 0.5


@pytest.mark.pitfall
async def test_pitfall_except_baseexception_overruns_the_deadline() -> None:
    async def fetch() -> str:
        outcome = "fetched"
        try:
            await asyncio.sleep(5)
        except BaseException:  # noqa: ASYNC103 - the pitfall on purpose
            outcome = "failed, carrying on"
        await asyncio.sleep(0.3)  # the work goes on after the deadline has passed
        return outcome

    started = time.monotonic()
    async with asyncio.timeout(0.05):  # no TimeoutError comes out of this block
        result = await fetch()
    assert result == "failed, carrying on"
    assert time.monotonic() - started >= 0.3
