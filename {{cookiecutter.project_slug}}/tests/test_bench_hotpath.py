"""``bench/hotpath.py`` runs: a smoke run, not a measurement.

Benchmarks are not tests. This only proves that the hot-path benchmark still works end to end:
it migrates a throwaway database on the tests' PostgreSQL, starts the service and both
reference apps (``bench/reference_ceiling.py``, ``bench/reference_naive.py``), loads each of
them for one second with four connections, and writes its Markdown table. No figure is
compared with anything (the suite shares the machine with everything else that runs); what is
asserted is that every app has its row, answered, and answered 200 only, and that the
service's loop lag was read from its own monitor.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import PROJECT_ROOT

HOTPATH = PROJECT_ROOT / "bench" / "hotpath.py"
APPS = {"ceiling", "service", "naive"}
CONNECTIONS = 4
# A bound, not an expectation: a run takes about 10 s here, more on a machine kept busy by the
# rest of the suite.
TIMEOUT = 180
{%- if cookiecutter.auth == "bearer" %}

# auth=bearer: the benchmarks send requests without a token, which the service refuses.
pytestmark = pytest.mark.skip(reason="auth=bearer: bench/hotpath.py needs a service with auth=none")
{%- endif %}


def run_hotpath(server_url: str, generator: str, output: Path) -> subprocess.CompletedProcess[str]:
    environment = dict(os.environ)
    # The tests' PostgreSQL (TEST_DATABASE_URL's, or the session's embedded one): the benchmark
    # works in a throwaway database of its own there.
    environment["TEST_DATABASE_URL"] = server_url
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(PROJECT_ROOT / "src"), environment.get("PYTHONPATH")])
    )
    command = [sys.executable, str(HOTPATH), "--seconds", "1", "--rounds", "1",
               "--connections", str(CONNECTIONS), "--generator", generator,
               "--output", str(output)]  # fmt: skip
    return subprocess.run(  # noqa: S603 - our own interpreter running our own script
        command, cwd=PROJECT_ROOT, env=environment, capture_output=True, text=True,
        timeout=TIMEOUT, check=False,
    )  # fmt: skip


def table_rows(markdown: str) -> dict[str, dict[str, str]]:
    """The rows of the results table at ``CONNECTIONS`` connections, by app: column -> cell."""
    lines = [line.strip().strip("|") for line in markdown.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].split("|")]
    rows = [
        dict(zip(header, (cell.strip() for cell in line.split("|")), strict=True))
        for line in lines[2:]  # past the header and its separator
    ]
    return {row["app"]: row for row in rows if row["connections"] == str(CONNECTIONS)}


@pytest.mark.parametrize(
    "generator",
    [
        "python",
        pytest.param(
            "wrk",
            marks=pytest.mark.skipif(
                shutil.which("wrk") is None,
                reason="wrk is not installed (apt-get install wrk): its path is not smoke-tested",
            ),
        ),
    ],
)
def test_hotpath_benchmark_runs_and_writes_its_table(
    server_url: str, generator: str, tmp_path: Path
) -> None:
    output = tmp_path / "b.md"

    finished = run_hotpath(server_url, generator, output)

    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-4000:]
    rows = table_rows(output.read_text())
    assert set(rows) == APPS, output.read_text()
    for app, row in rows.items():
        assert float(row["req/s"]) > 0, (app, row)
        assert int(row["requests"]) > 0, (app, row)
        assert row["non-200"] == "0", (app, row)
    assert rows["service"]["loop lag p99 ms"] != "-", rows["service"]
    assert rows["ceiling"]["ratio"] == "1.00"
