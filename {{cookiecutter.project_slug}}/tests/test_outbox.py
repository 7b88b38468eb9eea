"""The transactional outbox: the order and its notification commit together, and the dispatcher
delivers it through outages, with backoff, up to a dead-letter state, then cleans up.

Timings are scaled down through the settings (retry delays of a tenth of a second, polls of a
few hundredths) and every bound is stated relative to them, never as an absolute speed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from {{ cookiecutter.package_name }}.db.engine import create_sessionmaker
from {{ cookiecutter.package_name }}.db.session import transaction
from {{ cookiecutter.package_name }}.outbox.dispatcher import (
    DispatchPolicy,
    OutboxDispatcher,
    retry_delay,
)
from {{ cookiecutter.package_name }}.outbox.models import ORDER_NOTIFICATION
from {{ cookiecutter.package_name }}.outbox.store import enqueue
from {{ cookiecutter.package_name }}.settings import Settings
from {{ cookiecutter.package_name }}.upstream.calls import Upstreams

from .conftest import running_app, upstream_settings
from .test_orders_shielded import eventually
from .upstream_server import ScriptedUpstream

OUTBOX_LOGGER = "{{ cookiecutter.package_name }}.outbox"
ORDER = {"item": "atlas", "quantity": 1}
POLL = 0.02
BASE = 0.1
# A busy machine (two cores, the suite's other workers) may start a due retry this much late.
SLACK = 1.0


def fast_outbox(database_url: str, upstream: ScriptedUpstream, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "outbox_poll_interval": POLL,
        "outbox_retry_base": BASE,
        "outbox_retry_cap": 0.4,
        "outbox_max_attempts": 50,
    }
    values.update(overrides)
    return upstream_settings(database_url, upstream, **values)


async def new_user(client: httpx2.AsyncClient) -> int:
    response = await client.post("/users", json={"email": "outbox@example.com", "name": "O"})
    assert response.status_code == 201, response.text
    user_id: int = response.json()["id"]
    return user_id


async def outbox_rows(engine: AsyncEngine) -> list[dict[str, Any]]:
    async with engine.connect() as connection:
        result = await connection.execute(
            text("SELECT id, status, attempts, payload, last_error FROM outbox ORDER BY id")
        )
        return [dict(row._mapping) for row in result]


async def rows_match(engine: AsyncEngine, check: Callable[[list[dict[str, Any]]], bool]) -> bool:
    return check(await outbox_rows(engine))


async def holds(condition: Callable[[], bool]) -> bool:
    """``condition()``, awaitable, for ``eventually`` (state in memory has no event either)."""
    return condition()


def all_delivered(rows: list[dict[str, Any]]) -> bool:
    return all(row["status"] == "delivered" for row in rows)


def attempts_for(upstream: ScriptedUpstream, order_id: int) -> list[float]:
    """When each POST /notifications for ``order_id`` arrived (time.monotonic)."""
    return [
        item.at
        for item in upstream.received
        if item.method == "POST" and item.body["order_id"] == order_id
    ]


def delivered(upstream: ScriptedUpstream) -> list[int]:
    return [int(body["order_id"]) for bodies in upstream.notifications.values() for body in bodies]


def ceilings(attempts: int, base: float, cap: float) -> list[float]:
    """The longest wait after each of the first ``attempts - 1`` failures."""
    return [min(cap, base * 2 ** (n - 1)) for n in range(1, attempts)]


@pytest.fixture
async def clean_outbox(db_engine: AsyncEngine) -> AsyncIterator[None]:
    """Leave no pending row behind: a later test's app would send it to its own notifier."""
    yield
    async with db_engine.begin() as connection:
        await connection.execute(text("TRUNCATE outbox"))


# --- one transaction -------------------------------------------------------------------------


async def test_an_order_and_its_notification_commit_together(
    database_url: str, upstream: ScriptedUpstream, db_engine: AsyncEngine, empty_tables: None
) -> None:
    # A long poll interval: after its first round, the dispatcher stays out of the way.
    settings = fast_outbox(database_url, upstream, outbox_poll_interval=60.0)
    async with running_app(settings) as (client, _):
        user_id = await new_user(client)
        async with db_engine.connect() as locker:
            # SHARE mode lets everyone read the outbox and nobody write to it: the order's
            # transaction stops at its outbox insert, after the order insert.
            await locker.execute(text("LOCK TABLE outbox IN SHARE MODE"))
            locker_pid = await locker.scalar(text("SELECT pg_backend_pid()"))
            posting = asyncio.create_task(client.post(f"/users/{user_id}/orders", json=ORDER))
            assert await eventually(lambda: blocked_by(db_engine, locker_pid, 1))

            # The order row exists, inside a transaction that cannot commit without its
            # notification: from outside there is no order yet.
            assert await order_count(db_engine) == 0
            await locker.commit()
        response = await posting
        await upstream.wait_for_notifications(1)

    assert response.status_code == 201
    [row] = await outbox_rows(db_engine)
    assert row["payload"]["order_id"] == response.json()["id"]
    assert await order_count(db_engine) == 1


async def blocked_by(engine: AsyncEngine, pid: int, expected: int) -> bool:
    async with engine.connect() as connection:
        result = await connection.execute(
            text("SELECT count(*) FROM pg_stat_activity WHERE :pid = ANY(pg_blocking_pids(pid))"),
            {"pid": pid},
        )
        return int(result.scalar_one()) == expected


async def order_count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text("SELECT count(*) FROM orders"))).scalar_one())


async def test_an_order_that_fails_leaves_no_notification(
    database_url: str, upstream: ScriptedUpstream, db_engine: AsyncEngine, empty_tables: None
) -> None:
    async with running_app(fast_outbox(database_url, upstream)) as (client, _):
        response = await client.post("/users/4242/orders", json=ORDER)

    assert response.status_code == 404
    assert await outbox_rows(db_engine) == []
    assert upstream.arrived("/notifications") == 0


# --- delivery through an outage --------------------------------------------------------------


async def test_notifications_are_delivered_once_the_notifier_is_back_from_an_outage(
    database_url: str,
    upstream: ScriptedUpstream,
    db_engine: AsyncEngine,
    empty_tables: None,
    clean_outbox: None,
) -> None:
    upstream.script("notify", "fail", status=503)
    async with running_app(fast_outbox(database_url, upstream)) as (client, _):
        user_id = await new_user(client)
        responses = [await client.post(f"/users/{user_id}/orders", json=ORDER) for _ in range(3)]
        placed = [response.json()["id"] for response in responses]
        # The outage outlasts several attempts of every order.
        assert await eventually(
            lambda: holds(lambda: all(len(attempts_for(upstream, id_)) >= 3 for id_ in placed)),
            within=10,
        )
        assert delivered(upstream) == []

        upstream.script("notify", "ok")
        assert await eventually(lambda: holds(lambda: len(delivered(upstream)) >= 3), within=10)
        assert await eventually(lambda: rows_match(db_engine, all_delivered))

    assert [response.status_code for response in responses] == [201, 201, 201]
    assert sorted(delivered(upstream)) == placed  # each once, none lost


# --- backoff, dead letters -------------------------------------------------------------------


class NoJitter(random.Random):
    """Always the longest delay: the schedule the jitter draws below, made visible."""

    def uniform(self, a: float, b: float) -> float:
        return b


@asynccontextmanager
async def own_dispatcher(
    db_engine: AsyncEngine, upstream: ScriptedUpstream, policy: DispatchPolicy, **options: Any
) -> AsyncIterator[OutboxDispatcher]:
    """A dispatcher of the test's own, on the tests' engine and a client of its own."""
    async with httpx2.AsyncClient() as http:
        upstreams = Upstreams(
            http,
            preferences_url=upstream.base_url,
            notifier_url=upstream.base_url,
            deadline=policy.attempt_timeout,
        )
        dispatcher = OutboxDispatcher(
            create_sessionmaker(db_engine),
            {ORDER_NOTIFICATION: upstreams.notify},
            policy,
            logger=logging.getLogger(OUTBOX_LOGGER),
            **options,
        )
        async with dispatcher:
            yield dispatcher


async def add_message(db_engine: AsyncEngine, order_id: int) -> None:
    async with transaction(create_sessionmaker(db_engine)) as session:
        payload = {"user_id": 1, "order_id": order_id}
        await enqueue(session, ORDER_NOTIFICATION, payload, request_id="backoff-req")


async def test_retries_back_off_exponentially(
    upstream: ScriptedUpstream, db_engine: AsyncEngine, empty_tables: None
) -> None:
    upstream.script("notify", "fail", status=503)
    policy = DispatchPolicy(
        attempt_timeout=1.0, poll_interval=POLL, retry_base=BASE, retry_cap=10.0, max_attempts=5
    )
    await add_message(db_engine, order_id=7)
    async with own_dispatcher(db_engine, upstream, policy, rng=NoJitter()):
        assert await eventually(
            lambda: rows_match(db_engine, lambda rows: rows[0]["status"] == "dead"), within=10
        )

    arrivals = attempts_for(upstream, 7)
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    expected = ceilings(policy.max_attempts, policy.retry_base, policy.retry_cap)
    assert len(arrivals) == policy.max_attempts
    # Each wait is the scheduled one (0.1, 0.2, 0.4, 0.8 s): never shorter, and late by no
    # more than a poll interval and the machine's slack.
    for gap, wait in zip(gaps, expected, strict=True):
        assert wait * 0.95 <= gap <= wait + POLL + SLACK


def test_full_jitter_draws_below_a_ceiling_that_doubles_up_to_the_cap() -> None:
    rng = random.Random(7)
    for attempts in range(1, 12):
        ceiling = min(5.0, 0.5 * 2 ** (attempts - 1))
        draws = [retry_delay(attempts, base=0.5, cap=5.0, rng=rng) for _ in range(200)]
        assert all(0.0 <= draw <= ceiling for draw in draws)
        assert max(draws) > ceiling * 0.8  # the whole range is used, not a fixed fraction
        assert min(draws) < ceiling * 0.2
    assert retry_delay(10_000, base=0.5, cap=5.0, rng=NoJitter()) == 5.0  # no overflow


async def test_a_notification_is_dead_after_the_maximum_attempts(
    database_url: str,
    upstream: ScriptedUpstream,
    db_engine: AsyncEngine,
    empty_tables: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    max_attempts = 4
    cap = 0.4
    settings = fast_outbox(database_url, upstream, outbox_max_attempts=max_attempts)
    upstream.script("notify", "fail", status=503)
    caplog.set_level(logging.WARNING, logger=OUTBOX_LOGGER)
    async with running_app(settings) as (client, _):
        user_id = await new_user(client)
        response = await client.post(
            f"/users/{user_id}/orders", json=ORDER, headers={"X-Request-ID": "dead-letter-1"}
        )
        order_id = response.json()["id"]
        assert await eventually(
            lambda: rows_match(db_engine, lambda rows: rows[0]["status"] == "dead"), within=10
        )
        # Dead means left alone: no attempt in several times the longest retry delay.
        await asyncio.sleep(2 * cap + 5 * POLL)

    [row] = await outbox_rows(db_engine)
    arrivals = attempts_for(upstream, order_id)
    assert len(arrivals) == row["attempts"] == max_attempts
    assert "notifier answered 503" in row["last_error"]
    # With the real (random) jitter, each wait stays under its ceiling.
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    for gap, ceiling in zip(gaps, ceilings(max_attempts, BASE, cap), strict=True):
        assert gap <= ceiling + POLL + SLACK
    # The outbox's own records: on a busy machine the loop-lag monitor may warn too.
    records = [record for record in caplog.records if record.name == OUTBOX_LOGGER]
    dead = [record for record in records if record.levelno == logging.ERROR]
    assert [getattr(record, "outbox_id", None) for record in dead] == [row["id"]]
    assert f"dead after {max_attempts} attempts" in dead[0].getMessage()
    warnings = [record for record in records if record.levelno == logging.WARNING]
    assert len(warnings) == max_attempts - 1  # one per failed attempt that was retried


# --- cleanup, stopping -----------------------------------------------------------------------


async def test_delivered_notifications_are_deleted_after_the_retention_and_dead_ones_kept(
    database_url: str,
    upstream: ScriptedUpstream,
    db_engine: AsyncEngine,
    empty_tables: None,
    clean_outbox: None,
) -> None:
    retention = 2.0
    settings = fast_outbox(
        database_url, upstream, outbox_retention=retention, outbox_cleanup_interval=0.1
    )
    async with db_engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO outbox (topic, payload, status, attempts) "
                "VALUES ('order-notification', '{\"user_id\": 1, \"order_id\": -1}', 'dead', 20)"
            )
        )
    async with running_app(settings) as (client, _):
        user_id = await new_user(client)
        await client.post(f"/users/{user_id}/orders", json=ORDER)
        await upstream.wait_for_notifications(1)
        assert await eventually(
            lambda: rows_match(db_engine, lambda rows: rows[-1]["status"] == "delivered")
        )
        # Many cleanup rounds later, but well inside the retention: still there.
        await asyncio.sleep(5 * 0.1)
        assert [row["status"] for row in await outbox_rows(db_engine)] == ["dead", "delivered"]
        assert await eventually(
            lambda: rows_match(db_engine, lambda rows: len(rows) == 1), within=retention + 5
        )

    [kept] = await outbox_rows(db_engine)
    assert kept["status"] == "dead"


async def test_stop_cuts_a_send_in_flight_within_its_grace_and_the_message_stays_owed(
    upstream: ScriptedUpstream, db_engine: AsyncEngine, empty_tables: None
) -> None:
    upstream.script("notify", "hang")
    policy = DispatchPolicy(attempt_timeout=20.0, lease=30.0, poll_interval=POLL)
    await add_message(db_engine, order_id=9)
    grace = 0.3
    async with own_dispatcher(db_engine, upstream, policy) as dispatcher:
        assert await eventually(lambda: holds(lambda: upstream.arrived("/notifications") == 1))
        started = time.monotonic()
        await dispatcher.stop(grace)
        stopped_after = time.monotonic() - started

    assert grace * 0.95 <= stopped_after < grace + SLACK
    assert await upstream.wait_abandoned("notify", 1) == 1  # the connection was closed
    [row] = await outbox_rows(db_engine)
    # Still owed: claimed (one attempt counted), not marked; sent again once the lease ends.
    assert (row["status"], row["attempts"]) == ("pending", 1)
