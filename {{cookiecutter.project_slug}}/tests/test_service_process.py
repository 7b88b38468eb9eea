"""The real server process: startup, JSON logs and the access log, SIGTERM exits 0, development
on the embedded PostgreSQL with migrations applied at start."""

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


async def test_each_request_is_one_structured_access_line_with_its_request_id(
    database_url: str,
) -> None:
    environment = {"ENVIRONMENT": "test", "DATABASE_URL": database_url}
    async with running_service(environment, ready_path="/health/ready") as service:
        async with service.client() as client:
            missing = await client.get("/users/999999999", headers={"X-Request-ID": "access-1"})
            created = await client.post(
                "/users",
                json={"email": "access@example.com", "name": "A"},
                headers={"X-Request-ID": "access-2"},
            )
        service.process.send_signal(signal.SIGTERM)
        await service.wait_for_exit(15)

    assert missing.status_code == 404
    assert created.status_code in {201, 409}
    records = service.log_records()
    # uvicorn's own access log is off: one line per request, ours, with fields to filter on.
    assert not [record for record in records if record["logger"] == "uvicorn.access"]
    access = [record for record in records if str(record["logger"]).endswith(".access")]
    by_id = {record.get("request_id"): record for record in access}
    assert len([record for record in access if record.get("request_id") == "access-1"]) == 1
    assert by_id["access-1"]["message"] == "GET /users/999999999 404"
    assert (by_id["access-1"]["method"], by_id["access-1"]["status"]) == ("GET", 404)
    assert by_id["access-1"]["path"] == "/users/999999999"
    assert isinstance(by_id["access-1"]["duration_ms"], float)
    assert by_id["access-2"]["status"] == created.status_code


async def test_access_log_false_writes_no_access_line(database_url: str) -> None:
    environment = {"ENVIRONMENT": "test", "DATABASE_URL": database_url, "ACCESS_LOG": "false"}
    async with running_service(environment, ready_path="/health/ready") as service:
        async with service.client() as client:
            assert (await client.get("/users/999999999")).status_code == 404
        service.process.send_signal(signal.SIGTERM)
        await service.wait_for_exit(15)

    records = service.log_records()
    assert not [record for record in records if str(record["logger"]).endswith("access")]
