"""The real server process: startup, JSON logs, SIGTERM exits 0, development on the embedded
PostgreSQL with migrations applied at start."""

from __future__ import annotations

import importlib.util
import signal
from pathlib import Path

from .service_process import running_service


async def test_sigterm_stops_the_service_with_exit_code_0(database_url: str) -> None:
    environment = {"ENVIRONMENT": "test", "DATABASE_URL": database_url, "SHUTDOWN_GRACE": "5"}
    async with running_service(environment, ready_path="/health/ready") as service:
        async with service.client() as client:
            created = await client.post("/users", json={"email": "p@example.com", "name": "P"})
            assert created.status_code in {201, 409}

        service.process.send_signal(signal.SIGTERM)
        exit_code = await service.wait_for_exit(15)

    assert exit_code == 0
    records = service.log_records()  # every line is one JSON object
    messages = [record["message"] for record in records]
    assert "service started" in messages
    assert "service stopping" in messages
    assert all({"ts", "level", "logger", "message"} <= record.keys() for record in records)
    started = next(record for record in records if record["message"] == "service started")
    expected_loop = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio.unix_events"
    assert str(started["event_loop"]).startswith(expected_loop)


async def test_development_runs_on_the_embedded_postgres_with_migrations(tmp_path: Path) -> None:
    data_dir = tmp_path / "pgdata"
    environment = {"ENVIRONMENT": "development", "EMBEDDED_POSTGRES_DIR": str(data_dir)}
    async with running_service(environment, ready_path="/health/ready") as service:
        async with service.client() as client:
            created = await client.post("/users", json={"email": "dev@example.com", "name": "D"})
            fetched = await client.get(f"/users/{created.json()['id']}")
            order = await client.post(
                f"/users/{created.json()['id']}/orders", json={"item": "tea", "quantity": 1}
            )
        assert (data_dir / "postmaster.pid").exists()

        service.process.send_signal(signal.SIGTERM)
        exit_code = await service.wait_for_exit(30)

    assert created.status_code == 201
    assert fetched.json()["email"] == "dev@example.com"
    assert order.status_code == 201
    assert exit_code == 0
    # The service stopped the PostgreSQL it started.
    assert not (data_dir / "postmaster.pid").exists()
