"""The outbox on real processes: what no in-process test can show.

- A process killed (SIGKILL: no shutdown, no drain) while an order's notification is on its way
  loses nothing: the next process sends it once the claim's lease has run out.
- Two replicas on one database, both polling: each notification is sent exactly once.
- The pitfall: the in-memory version, however well it tracks and drains its task, loses the
  notification with the process, and no restart can bring it back: nothing recorded it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from collections.abc import Callable

import httpx2
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from .in_memory_notify_app import IN_MEMORY_ORDER_PATH
from .service_process import ServiceProcess, running_service
from .upstream_server import ScriptedUpstream

LEASE = 2.0  # OUTBOX_LEASE: how long a killed process's claim keeps others off a message
POLL = 0.05  # OUTBOX_POLL_INTERVAL
NAIVE_APP = "tests.in_memory_notify_app:create_app_with_in_memory_notify"
ORDER = {"item": "globe", "quantity": 1}


def _environment(database_url: str, upstream: ScriptedUpstream, **extra: str) -> dict[str, str]:
    return {
        "ENVIRONMENT": "test",
        "DATABASE_URL": database_url,
        "PREFERENCES_URL": upstream.base_url,
        "NOTIFIER_URL": upstream.base_url,
        "UPSTREAM_TIMEOUT": "1",
        "REQUEST_TIMEOUT": "10",
        "OUTBOX_LEASE": f"{LEASE:g}",
        "OUTBOX_POLL_INTERVAL": f"{POLL:g}",
        **extra,
    }


async def _eventually(condition: Callable[[], bool], within: float) -> None:
    """Poll a plain condition (there is no event to wait on) for at most ``within`` seconds."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - polling state that has no event
            await asyncio.sleep(0.02)


async def _new_user(client: httpx2.AsyncClient) -> int:
    response = await client.post(
        "/users", json={"email": f"{uuid.uuid4().hex}@example.com", "name": "Kill"}
    )
    assert response.status_code == 201, response.text
    user_id: int = response.json()["id"]
    return user_id


def _delivered_ids(upstream: ScriptedUpstream) -> list[int]:
    """The order ids of the notifications the notifier accepted, one per acceptance."""
    return [int(body["order_id"]) for bodies in upstream.notifications.values() for body in bodies]


async def _kill_while_notifying(
    service: ServiceProcess, upstream: ScriptedUpstream, path: str
) -> int:
    """Place an order through ``path``, wait until its notification has reached the (hanging)
    notifier, and SIGKILL the process right then. Returns the order's id."""
    async with service.client(timeout=10) as client:
        user_id = await _new_user(client)
        placed = await client.post(path.format(user_id=user_id), json=ORDER)
    assert placed.status_code == 201, placed.text
    await _eventually(lambda: upstream.arrived("/notifications") >= 1, within=5)
    service.process.kill()
    await service.wait_for_exit(5)
    order_id: int = placed.json()["id"]
    return order_id


async def test_a_notification_in_flight_when_the_process_is_killed_is_sent_after_a_restart(
    database_url: str, upstream: ScriptedUpstream, empty_tables: None
) -> None:
    environment = _environment(database_url, upstream)
    upstream.script("notify", "hang")
    async with running_service(environment) as first:
        order_id = await _kill_while_notifying(first, upstream, "/users/{user_id}/orders")
    assert _delivered_ids(upstream) == []  # the send died with the process

    upstream.script("notify", "ok")
    async with running_service(environment):
        # Once the dead process's claim has run out, the new one's poller takes the message.
        await _eventually(lambda: bool(_delivered_ids(upstream)), within=LEASE + 15)

    assert _delivered_ids(upstream) == [order_id]


async def test_two_replicas_send_each_notification_exactly_once(
    database_url: str, upstream: ScriptedUpstream, db_engine: AsyncEngine, empty_tables: None
) -> None:
    # One message per claim, many claims: the two dispatchers claim at the same moment as often
    # as possible, which is where a claim without row locks would send twice.
    environment = _environment(database_url, upstream, OUTBOX_BATCH_SIZE="1")
    backlog = 400
    orders_per_replica = 10
    async with (
        running_service(environment) as first,
        running_service(environment) as second,
        first.client(timeout=10) as to_first,
        second.client(timeout=10) as to_second,
    ):
        # A backlog that both pollers find due at the same moment (as after an outage) ...
        async with db_engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO outbox (topic, payload) SELECT 'order-notification', "
                    "jsonb_build_object('user_id', 0, 'order_id', -n) "
                    "FROM generate_series(1, :count) AS n"
                ),
                {"count": backlog},
            )
        # ... while both replicas take orders and send their first attempts.
        user_id = await _new_user(to_first)
        placed = await asyncio.gather(
            *(
                client.post(f"/users/{user_id}/orders", json=ORDER)
                for client in (to_first, to_second)
                for _ in range(orders_per_replica)
            )
        )
        expected = {-n for n in range(1, backlog + 1)} | {
            response.json()["id"] for response in placed
        }
        await _eventually(lambda: len(_delivered_ids(upstream)) >= len(expected), within=20)
        # A little longer, so that a late duplicate would arrive before the count below.
        await asyncio.sleep(10 * POLL)

    assert all(response.status_code == 201 for response in placed)
    sends = Counter(
        int(item.body["order_id"]) for item in upstream.received if item.method == "POST"
    )
    assert set(sends) == expected
    assert [order_id for order_id, count in sends.items() if count != 1] == []


@pytest.mark.pitfall
async def test_pitfall_an_in_memory_notification_is_lost_when_the_process_is_killed(
    database_url: str, upstream: ScriptedUpstream, db_engine: AsyncEngine, empty_tables: None
) -> None:
    environment = _environment(database_url, upstream)
    upstream.script("notify", "hang")
    async with running_service(environment, app_factory=NAIVE_APP) as naive:
        order_id = await _kill_while_notifying(naive, upstream, IN_MEMORY_ORDER_PATH)

    upstream.script("notify", "ok")
    async with running_service(environment) as restarted:
        # Longer than the outbox version needed to recover: a lease, and many poll intervals.
        await asyncio.sleep(LEASE + 20 * POLL)
        assert restarted.process.returncode is None

    async with db_engine.connect() as connection:
        stored = await connection.scalar(
            text("SELECT count(*) FROM orders WHERE id = :id"), {"id": order_id}
        )
    # The order is stored; its notification is gone for good: no row says it is owed.
    assert stored == 1
    assert _delivered_ids(upstream) == []
    assert upstream.arrived("/notifications") == 1  # the one attempt, cut by the kill
