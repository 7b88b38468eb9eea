"""Every proof is load-bearing: replace a practice with its naive version and its proof fails.

For each practice, the test below takes a freshly baked service, rewrites the practice's code
into the naive version that people write first (``gather`` for the task group, a bare
``create_task`` for the supervisor, a plain ``close()``, FastAPI's default dependency scope,
...), runs the practice's named proofs in the generated suite, and asserts two things:
the run fails, and among the failures are the tests that the pattern catalog names as that
practice's proof. A proof that still passes with the practice removed proves nothing, and this is
where that shows.

Each rewrite must match its source text exactly once, so a refactoring of the practice's code
that leaves a removal stale fails here loudly instead of silently testing nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .conftest import TEMPLATE_DIR, bake_into, fresh_workdir, nested_pytest_options

CATALOG_SOURCE = TEMPLATE_DIR / "{{cookiecutter.project_slug}}" / "docs" / "patterns.md"


@dataclass(frozen=True)
class Removal:
    """The naive version of one practice, and the catalog's proofs that must catch it."""

    practice: int  # the number of the catalog section that explains it
    path: str  # the file rewritten, relative to the baked project
    rewrites: tuple[tuple[str, str], ...]  # (code of the practice, its naive replacement)
    proofs: tuple[str, ...]  # tests/...py::name, each named in that section's Proof
    needs: str | None = None  # a program the proofs need, when the machine may lack it
    answers: tuple[tuple[str, str], ...] = ()  # template answers of the bake, when not defaults


def source(module: str) -> str:
    """A module of the service's package, whatever the package is called in the bake."""
    return f"src/<package>/{module}"


FANOUT_WITH_GATHER = """\
async def run_all(named: Mapping[str, Source[T]]) -> dict[str, T]:
    values = await asyncio.gather(*(_run_source(name, src) for name, src in named.items()))
    return dict(zip(named, values, strict=True))


async def _replaced_run_all(named: Mapping[str, Source[T]]) -> dict[str, T]:"""

FANOUT_ONE_AFTER_ANOTHER = """\
async def run_all(named: Mapping[str, Source[T]]) -> dict[str, T]:
    return {name: await _run_source(name, src) for name, src in named.items()}


async def _replaced_run_all(named: Mapping[str, Source[T]]) -> dict[str, T]:"""

SETTLED_WITH_GATHER = """\
async def run_settled(named: Mapping[str, Source[T]]) -> dict[str, Outcome[T]]:
    calls = (src if isinstance(src, Coroutine) else src() for src in named.values())
    values = await asyncio.gather(*calls)
    return {name: Ok(value) for name, value in zip(named, values, strict=True)}


async def _replaced_run_settled(named: Mapping[str, Source[T]]) -> dict[str, Outcome[T]]:"""

SETTLED_ONE_AFTER_ANOTHER = """\
async def run_settled(named: Mapping[str, Source[T]]) -> dict[str, Outcome[T]]:
    return {name: await _settle(src) for name, src in named.items()}


async def _replaced_run_settled(named: Mapping[str, Source[T]]) -> dict[str, Outcome[T]]:"""


RECORD_KEY_IN_TRANSACTION = """\
        if key is not None:
            await record_key(
                session,
                user_id=user_id,
                key=key,
                fingerprint=fingerprint,
                order_id=order.id,
                ttl=resources.settings.idempotency_key_ttl,
            )
        message_id = await _enqueue_notification(session, order)
"""

RECORD_KEY_AFTER_COMMIT = """\
        message_id = await _enqueue_notification(session, order)
    if key is not None:
        async with transaction(resources.sessionmaker) as session:
            await record_key(
                session,
                user_id=user_id,
                key=key,
                fingerprint=fingerprint,
                order_id=order.id,
                ttl=resources.settings.idempotency_key_ttl,
            )
"""


BEARER = (("auth", "bearer"),)

REMOVALS = {
    "fanout-taskgroup-to-gather": Removal(
        practice=1,
        path=source("aio/fanout.py"),
        rewrites=(
            ("async def run_all(named: Mapping[str, Source[T]]) -> dict[str, T]:",
             FANOUT_WITH_GATHER),
        ),
        proofs=(
            "tests/aio/test_aio_fanout.py::test_first_failure_cancels_the_others_and_names_the_source",
            "tests/test_dashboard.py::test_first_failure_cancels_the_other_sources",
        ),
    ),
    "fanout-taskgroup-to-sequential-awaits": Removal(
        practice=1,
        path=source("aio/fanout.py"),
        rewrites=(
            ("async def run_all(named: Mapping[str, Source[T]]) -> dict[str, T]:",
             FANOUT_ONE_AFTER_ANOTHER),
        ),
        proofs=(
            "tests/aio/test_aio_fanout.py::test_latency_is_the_slowest_source_not_the_sum",
            "tests/test_dashboard.py::test_latency_is_the_slowest_source_not_the_sum",
        ),
    ),
    "settled-to-gather-without-return-exceptions": Removal(
        practice=2,
        path=source("aio/settled.py"),
        rewrites=(
            ("async def run_settled(named: Mapping[str, Source[T]]) -> dict[str, Outcome[T]]:",
             SETTLED_WITH_GATHER),
        ),
        proofs=(
            "tests/aio/test_aio_settled.py::test_every_section_is_reported_by_name",
            "tests/test_summary.py::test_one_failing_upstream_costs_only_its_section",
        ),
    ),
    "settled-to-sequential-awaits": Removal(
        practice=2,
        path=source("aio/settled.py"),
        rewrites=(
            ("async def run_settled(named: Mapping[str, Source[T]]) -> dict[str, Outcome[T]]:",
             SETTLED_ONE_AFTER_ANOTHER),
        ),
        proofs=("tests/test_summary.py::test_latency_is_the_slowest_source_not_the_sum",),
    ),
    "call-deadline-to-no-deadline": Removal(
        practice=3,
        path=source("aio/deadlines.py"),
        rewrites=(("timeout = asyncio.timeout(seconds)", "timeout = asyncio.timeout(None)"),),
        proofs=(
            "tests/aio/test_aio_deadlines.py::test_call_deadline_bounds_the_whole_block_not_each_step",
        ),
    ),
    "upstream-calls-without-total-deadline": Removal(
        practice=3,
        path=source("upstream/calls.py"),
        rewrites=(
            ('async with call_deadline(self.deadline, what=f"{service} {method}"):',
             "if True:"),
        ),
        proofs=(
            "tests/test_upstream_deadlines.py::test_a_hanging_upstream_is_cut_at_the_deadline",
            "tests/test_upstream_deadlines.py::test_a_trickling_upstream_is_cut_at_the_total_deadline",
        ),
    ),
    "request-deadline-middleware-to-pass-through": Removal(
        practice=3,
        path=source("aio/deadlines.py"),
        rewrites=(('        if scope["type"] != "http":\n', "        if True:\n"),),
        proofs=(
            "tests/aio/test_aio_deadlines.py::test_middleware_answers_504_json_when_the_app_is_too_slow",
        ),
    ),
    "shielded-order-write-to-awaited-in-the-request": Removal(
        practice=5,
        path=source("api/users.py"),
        rewrites=(
            ("    placed = await resources.supervisor.run_shielded(\n"
             "        place_order(resources, user_id, body, key), "
             'name=f"place-order:user-{user_id}"\n    )\n',
             "    placed = await place_order(resources, user_id, body, key)\n"),
        ),
        proofs=(
            "tests/test_orders_shielded.py::test_an_order_lands_and_is_notified_after_its_request_timed_out",
        ),
    ),
    "run-shielded-without-shield": Removal(
        practice=5,
        path=source("aio/background.py"),
        rewrites=(("return await asyncio.shield(task)", "return await task"),),
        proofs=(
            "tests/aio/test_aio_background.py::test_shielded_work_completes_although_the_caller_is_cancelled",
        ),
    ),
    "tracked-spawn-to-bare-create-task": Removal(
        practice=6,
        path=source("aio/background.py"),
        rewrites=(
            ("        task, _ = self._start(coro, name)\n        return task\n",
             "        return asyncio.create_task(coro, name=name)\n"),
        ),
        proofs=(
            "tests/aio/test_aio_background.py::test_a_tracked_task_survives_garbage_collection",
            "tests/aio/test_aio_background.py::test_a_failure_is_logged_at_once_with_task_name_and_request_id",
            "tests/test_background_notifications.py::test_shutdown_lets_a_pending_notification_finish",
        ),
    ),
    "lifespan-without-drain": Removal(
        practice=7,
        path=source("app.py"),
        rewrites=(
            ("stack.push_async_callback(_drain_background_work, supervisor, budget)", "pass"),
        ),
        proofs=(
            "tests/test_orders_shielded.py::test_shutdown_waits_for_a_shielded_write_in_flight",
            "tests/test_background_notifications.py::test_shutdown_lets_a_pending_notification_finish",
        ),
    ),
    "drain-with-a-grace-of-its-own": Removal(
        practice=7,
        path=source("app.py"),
        rewrites=(("supervisor.drain(budget.remaining())", "supervisor.drain(budget.seconds)"),),
        proofs=(
            "tests/test_signals.py::test_shutdown_fits_in_one_budget_with_requests_and_background_work_in_flight",
        ),
    ),
    "session-close-to-plain-close": Removal(
        practice=8,
        path=source("db/session.py"),
        rewrites=(
            ("        await close_despite_cancellation(session)\n",
             "        await session.close()\n"),
        ),
        proofs=(
            "tests/test_session_dependency.py::test_the_session_closes_before_a_repeatedly_cancelled_task_returns",
        ),
    ),
    "session-dependency-to-default-scope": Removal(
        practice=8,
        path=source("api/deps.py"),
        rewrites=(
            ('Depends(transactional_session, scope="function")',
             "Depends(transactional_session)"),
        ),
        proofs=("tests/test_session_dependency.py::test_a_failed_commit_is_the_response",),
    ),
    "fanout-sources-share-one-session": Removal(
        practice=8,
        path=source("api/users.py"),
        rewrites=(
            ('        "user": lambda: read_user(resources.sessionmaker, user_id),\n'
             '        "orders": lambda: read_orders(resources.sessionmaker, user_id, '
             "limit=orders_limit),\n",
             '        "user": lambda: load_user(shared, user_id),\n'
             '        "orders": lambda: orders_of(shared, user_id, limit=orders_limit),\n'),
            ("    # Each database source opens its own session: tasks running at once never "
             "share one.\n",
             "    shared = resources.sessionmaker()\n"),
        ),
        proofs=(
            "tests/test_sessions_per_task.py::test_concurrent_dashboards_each_source_with_its_own_session",
            "tests/test_sessions_per_task.py::test_one_dashboard_holds_a_connection_per_database_source",
        ),
    ),
    "blocking-gate-off": Removal(
        practice=10,
        path="tests/conftest.py",
        rewrites=(
            ('    if request.node.get_closest_marker("allow_blocking"):\n',
             "    if True:\n"),
        ),
        proofs=(
            "tests/test_blocking.py::test_blockbuster_fails_a_blocking_call_made_on_the_loop",
        ),
    ),
    "httpx2-client-to-httpx": Removal(
        practice=9,
        path=source("upstream/client.py"),
        rewrites=(("import httpx2\n", "import httpx as httpx2\n"),),
        proofs=(
            "tests/test_upstream_pool.py::test_cancelled_calls_give_their_pool_slots_back",
            "tests/test_upstream_pool.py::test_after_many_cancellations_the_whole_pool_is_usable",
        ),
    ),
    "thread-dump-from-a-loop-signal-handler": Removal(
        practice=11,
        path=source("aio/debug.py"),
        rewrites=(
            ("    faulthandler.register(signal.SIGUSR2, file=file or sys.stderr, "
             "all_threads=True)\n",
             "    loop.add_signal_handler(signal.SIGUSR2, lambda: faulthandler.dump_traceback("
             "file=file or sys.stderr, all_threads=True))\n"),
        ),
        proofs=(
            "tests/aio/test_aio_debug.py::test_sigusr2_dumps_every_thread_while_the_loop_is_blocked",
        ),
    ),
    "gc-freeze-off": Removal(
        practice=12,
        path=source("app.py"),
        rewrites=(("            gc.freeze()\n", "            pass\n"),),
        proofs=(
            "tests/test_gc_freeze.py::test_startup_objects_are_frozen_out_of_full_collections",
        ),
    ),
    "lint-gate-without-blind-except-rule": Removal(
        practice=4,
        path="pyproject.toml",
        rewrites=(('    "BLE",', ""),),
        proofs=("tests/test_lint_gates.py::test_ruff_catches",),
    ),
    "idempotency-key-ignored": Removal(
        practice=16,
        path=source("api/users.py"),
        rewrites=(
            ("    key = None if idempotency_key is None else "
             "parse_idempotency_key(idempotency_key)\n",
             "    key = None\n"),
        ),
        proofs=(
            "tests/test_idempotency.py::test_a_replay_answers_with_the_original_order_and_stores_nothing_new",
            "tests/test_idempotency.py::test_the_same_key_with_another_body_is_422",
            "tests/test_idempotency.py::test_concurrent_duplicates_store_one_order",
            "tests/test_orders_shielded.py::test_a_retry_with_its_idempotency_key_after_a_504_gets_the_order_that_landed",
        ),
    ),
    "idempotency-check-then-insert": Removal(
        practice=16,
        path=source("api/users.py"),
        rewrites=(
            ("from ..db.models import User\n",
             "from sqlalchemy import select\n\nfrom ..db.models import IdempotencyKey, User\n"),
            ("            stored = await claim_key(session, user_id=user_id, key=key, "
             "fingerprint=fingerprint)\n",
             "            stored = await session.scalar(select(IdempotencyKey.order_id).where("
             "IdempotencyKey.user_id == user_id, IdempotencyKey.key == key))\n"),
            (RECORD_KEY_IN_TRANSACTION, RECORD_KEY_AFTER_COMMIT),
        ),
        proofs=("tests/test_idempotency.py::test_concurrent_duplicates_store_one_order",),
    ),
    "idempotency-without-in-flight-lock": Removal(
        practice=16,
        path=source("db/idempotency.py"),
        rewrites=(
            ("    locked = await session.scalar(select(func.pg_try_advisory_xact_lock("
             "_lock_id(user_id, key))))\n",
             "    locked = True\n"),
        ),
        proofs=(
            "tests/test_orders_shielded.py::test_a_retry_with_its_idempotency_key_after_a_504_gets_the_order_that_landed",
            "tests/test_idempotency.py::test_concurrent_duplicates_store_one_order",
        ),
    ),
    "idempotency-keys-never-cleaned-up": Removal(
        practice=16,
        path=source("outbox/dispatcher.py"),
        rewrites=(
            ("        for job in (purge, *self._cleanup_jobs):\n", "        for job in ():\n"),
        ),
        proofs=(
            "tests/test_idempotency.py::test_an_expired_key_is_deleted_and_then_places_a_new_order",
        ),
    ),
    "outbox-to-in-memory-notification": Removal(
        practice=17,
        path=source("api/users.py"),
        rewrites=(
            ("        message_id = await _enqueue_notification(session, order)\n", ""),
            ('        resources.outbox.deliver(message_id), name=f"notify-order:{order.id}"\n',
             '        resources.upstreams.notify({"user_id": user_id, "order_id": order.id}),\n'
             '        name=f"notify-order:{order.id}",\n'),
        ),
        proofs=(
            "tests/test_outbox_process.py::test_a_notification_in_flight_when_the_process_is_killed_is_sent_after_a_restart",
            "tests/test_outbox.py::test_notifications_are_delivered_once_the_notifier_is_back_from_an_outage",
            "tests/test_outbox.py::test_an_order_and_its_notification_commit_together",
        ),
    ),
    "outbox-row-in-its-own-transaction": Removal(
        practice=17,
        path=source("api/users.py"),
        rewrites=(
            ("        message_id = await _enqueue_notification(session, order)\n",
             "    async with transaction(resources.sessionmaker) as session:\n"
             "        message_id = await _enqueue_notification(session, order)\n"),
        ),
        proofs=("tests/test_outbox.py::test_an_order_and_its_notification_commit_together",),
    ),
    "outbox-no-immediate-attempt": Removal(
        practice=17,
        path=source("api/users.py"),
        rewrites=(
            ("    resources.supervisor.spawn(\n"
             '        resources.outbox.deliver(message_id), name=f"notify-order:{order.id}"\n'
             "    )\n", ""),
        ),
        proofs=(
            "tests/test_background_notifications.py::test_the_response_does_not_wait_for_the_notification",
        ),
    ),
    "outbox-claim-without-skip-locked": Removal(
        practice=17,
        path=source("outbox/store.py"),
        rewrites=(
            ("        .limit(limit)\n        .with_for_update(skip_locked=True)\n",
             "        .limit(limit)\n"),
        ),
        proofs=(
            "tests/test_outbox_process.py::test_two_replicas_send_each_notification_exactly_once",
        ),
    ),
    "outbox-fixed-retry-delay": Removal(
        practice=17,
        path=source("outbox/dispatcher.py"),
        rewrites=(
            ("    ceiling = min(cap, base * 2.0 ** min(attempts - 1, 64))\n",
             "    ceiling = min(cap, base)\n"),
        ),
        proofs=("tests/test_outbox.py::test_retries_back_off_exponentially",),
    ),
    "outbox-no-dead-letter": Removal(
        practice=17,
        path=source("outbox/store.py"),
        rewrites=(
            ("    status = DEAD if claimed.attempts >= max_attempts else PENDING\n",
             "    status = PENDING\n"),
        ),
        proofs=("tests/test_outbox.py::test_a_notification_is_dead_after_the_maximum_attempts",),
    ),
    "outbox-no-retry": Removal(
        practice=17,
        path=source("outbox/store.py"),
        rewrites=(
            ("    status = DEAD if claimed.attempts >= max_attempts else PENDING\n",
             "    status = DEAD\n"),
        ),
        proofs=(
            "tests/test_outbox.py::test_notifications_are_delivered_once_the_notifier_is_back_from_an_outage",
        ),
    ),
    "outbox-no-poller": Removal(
        practice=17,
        path=source("outbox/dispatcher.py"),
        rewrites=(
            ("                    more = await self.dispatch_due() >= self.policy.batch_size\n",
             "                    more = False\n"),
        ),
        proofs=(
            "tests/test_outbox_process.py::test_a_notification_in_flight_when_the_process_is_killed_is_sent_after_a_restart",
            "tests/test_outbox.py::test_notifications_are_delivered_once_the_notifier_is_back_from_an_outage",
        ),
    ),
    "outbox-no-cleanup": Removal(
        practice=17,
        path=source("outbox/dispatcher.py"),
        rewrites=(
            ("        for job in (purge, *self._cleanup_jobs):\n", "        for job in ():\n"),
        ),
        proofs=(
            "tests/test_outbox.py::test_delivered_notifications_are_deleted_after_the_retention_and_dead_ones_kept",
        ),
    ),
    "pgbouncer-set-local-to-session-set": Removal(
        practice=18,
        path=source("db/engine.py"),
        rewrites=(("'{value}', true)", "'{value}', false)"),),
        proofs=(
            "tests/test_pgbouncer.py::test_the_timeouts_do_not_leak_to_the_next_client_of_the_server_connection",
        ),
        needs="pgbouncer",
    ),
    "pgbouncer-without-per-transaction-timeouts": Removal(
        practice=18,
        path=source("db/engine.py"),
        rewrites=(
            ("    if settings.db_pgbouncer:\n"
             "        set_timeouts_in_every_transaction(engine, settings)\n", ""),
        ),
        proofs=(
            "tests/test_pgbouncer.py::test_statement_timeout_fires_through_pgbouncer",
            "tests/test_pgbouncer.py::test_idle_in_transaction_timeout_holds_through_pgbouncer",
            "tests/test_pgbouncer.py::test_every_transaction_through_pgbouncer_carries_the_timeouts_and_the_name",
        ),
        needs="pgbouncer",
    ),
    "pgbouncer-with-statement-caches": Removal(
        practice=18,
        path=source("db/engine.py"),
        rewrites=(("        arguments.update(WITHOUT_STATEMENT_CACHES)\n", "        pass\n"),),
        proofs=(
            "tests/test_pgbouncer.py::test_concurrent_traffic_through_pgbouncer_has_no_errors",
        ),
        needs="pgbouncer",
    ),
    "error-path-re-raises-like-starlette": Removal(
        practice=19,
        path=source("errors.py"),
        rewrites=(
            ("                await response(scope, receive, send)\n",
             "                await response(scope, receive, send)\n            raise\n"),
        ),
        proofs=(
            "tests/test_error_mapping.py::test_an_unexpected_error_is_a_500_logged_once_and_the_connection_stays_open",
            "tests/test_error_mapping.py::test_a_statement_past_its_timeout_is_504_and_the_connection_serves_the_next_request",
        ),
    ),
    "error-middleware-removed": Removal(
        practice=19,
        path=source("app.py"),
        rewrites=(
            ("    app.add_middleware(ErrorMiddleware, retry_after=settings.retry_after)\n", ""),
        ),
        proofs=(
            "tests/test_error_mapping.py::test_an_unexpected_error_is_a_500_logged_once_and_the_connection_stays_open",
        ),
    ),
    "pool-timeout-not-mapped": Removal(
        practice=19,
        path=source("errors.py"),
        rewrites=(("    if isinstance(error, PoolTimeoutError):", "    if False:"),),
        proofs=(
            "tests/test_error_mapping.py::test_a_pool_with_no_free_connection_is_503_with_retry_after",
            "tests/test_error_mapping.py::test_a_database_failure_inside_a_fan_out_is_answered_as_that_failure",
        ),
    ),
    "statement-timeout-not-mapped": Removal(
        practice=19,
        path=source("errors.py"),
        rewrites=(("    if sqlstate == STATEMENT_TIMEOUT_SQLSTATE:", "    if False:"),),
        proofs=(
            "tests/test_error_mapping.py::test_a_statement_past_its_timeout_is_504_and_the_connection_serves_the_next_request",
        ),
    ),
    "admission-to-pass-through": Removal(
        practice=20,
        path=source("aio/admission.py"),
        rewrites=(
            ('        if scope["type"] != "http" or self._exempt(scope["path"]):\n',
             "        if True:\n"),
        ),
        proofs=(
            "tests/test_overload.py::test_the_excess_is_refused_within_the_admission_timeout_and_the_admitted_finish",
            "tests/aio/test_aio_admission.py::test_middleware_refuses_the_excess_with_503_retry_after_and_the_error_shape",
        ),
    ),
    "admission-queue-without-a-wait-budget": Removal(
        practice=20,
        path=source("aio/admission.py"),
        rewrites=(
            ("            async with asyncio.timeout(self.max_wait):\n",
             "            async with asyncio.timeout(None):\n"),
        ),
        proofs=(
            "tests/test_overload.py::test_the_excess_is_refused_within_the_admission_timeout_and_the_admitted_finish",
        ),
    ),
    "auth-without-audience-check": Removal(
        practice=28,
        path=source("auth/tokens.py"),
        rewrites=(
            ("                audience=self.audience,\n", ""),
            ('"strict_aud": False}', '"strict_aud": False, "verify_aud": False}'),
        ),
        proofs=("tests/test_auth.py::test_a_bad_token_is_401_invalid_token",),
        answers=BEARER,
    ),
    "auth-without-subject-check": Removal(
        practice=28,
        path=source("app.py"),
        rewrites=(
            ("app.include_router(users.router, dependencies=[Depends(authorize_user_access)])",
             "app.include_router(users.router)"),
        ),
        proofs=(
            "tests/test_auth.py::test_a_token_of_another_user_is_403",
            "tests/test_auth.py::test_creating_a_user_needs_the_admin_scope",
        ),
        answers=BEARER,
    ),
    "auth-allow-list-instead-of-default-deny": Removal(
        practice=28,
        path=source("auth/middleware.py"),
        rewrites=(
            ('if scope["type"] != "http" or is_public(scope["path"], self.public_paths):',
             'if scope["type"] != "http" or not scope["path"].startswith("/users"):'),
        ),
        proofs=("tests/test_auth.py::test_an_unknown_route_is_401_not_404",),
        answers=BEARER,
    ),
    "jwks-without-background-refresh": Removal(
        practice=28,
        path=source("auth/setup.py"),
        rewrites=(("    keys.start()\n", ""),),
        proofs=(
            "tests/test_jwks_refresh.py::test_a_rotated_key_is_picked_up_by_the_background_refresh",
        ),
        answers=BEARER,
    ),
    "jwks-drops-its-keys-when-a-refresh-fails": Removal(
        practice=28,
        path=source("auth/jwks.py"),
        rewrites=(
            ("            return False",
             "            self._keys = MappingProxyType({})\n            return False"),
        ),
        proofs=("tests/test_jwks_refresh.py::test_a_failed_refresh_keeps_the_old_keys_and_logs",),
        answers=BEARER,
    ),
    "metrics-labelled-by-raw-path": Removal(
        practice=21,
        path=source("observability/metrics.py"),
        rewrites=(
            ("                route_template(scope),\n", '                scope["path"],\n'),
        ),
        proofs=(
            "tests/test_metrics.py::test_requests_are_labelled_by_route_template_in_the_text_format",
        ),
    ),
    "metrics-in-the-global-registry": Removal(
        practice=21,
        path=source("observability/metrics.py"),
        rewrites=(
            ("from prometheus_client import CollectorRegistry, Gauge, Histogram, generate_latest",
             "from prometheus_client import REGISTRY, CollectorRegistry, Gauge, Histogram, "
             "generate_latest"),
            ("        self.registry = CollectorRegistry(auto_describe=True)\n",
             "        self.registry: CollectorRegistry = REGISTRY\n"),
        ),
        proofs=("tests/test_metrics.py::test_two_apps_in_one_process_keep_separate_metrics",),
    ),
    "request-id-not-forwarded-upstream": Removal(
        practice=22,
        path=source("upstream/calls.py"),
        rewrites=(
            ("headers = {REQUEST_ID_HEADER: request_id} if request_id is not None else None",
             "headers = None"),
        ),
        proofs=(
            "tests/test_request_id_propagation.py::test_every_upstream_call_of_a_request_carries_its_id",
            "tests/test_request_id_propagation.py::test_the_notification_carries_the_id_of_the_order_request_on_every_attempt",
        ),
    ),
    "body-limit-removed": Removal(
        practice=23,
        path=source("app.py"),
        rewrites=(
            ("    app.add_middleware(BodyLimitMiddleware, "
             "max_bytes=settings.max_body_bytes)\n", ""),
        ),
        proofs=(
            "tests/test_body_limit.py::test_a_declared_length_over_the_limit_is_413_before_the_body_is_read",
            "tests/test_body_limit.py::test_a_chunked_body_is_cut_at_the_limit_and_memory_stays_flat",
        ),
    ),
    "engine-shows-sql-parameters": Removal(
        practice=24,
        path=source("db/engine.py"),
        rewrites=(("        hide_parameters=True,\n", ""),),
        proofs=(
            "tests/test_security_input.py::test_no_request_value_reaches_the_log_on_a_database_error",
        ),
    ),
    "weak-debug-token-accepted": Removal(
        practice=24,
        path=source("settings.py"),
        rewrites=(
            ("        if self.debug_token is not None:\n"
             "            _check_production_debug_token("
             "self.debug_token.get_secret_value())\n", ""),
        ),
        proofs=(
            "tests/test_security_settings.py::test_production_refuses_a_weak_debug_token_naming_the_variable",
        ),
    ),
    "debug-routes-in-the-schema": Removal(
        practice=24,
        path=source("api/debug.py"),
        rewrites=(("    include_in_schema=False,\n", ""),),
        proofs=(
            "tests/test_security_settings.py::test_debug_routes_answer_but_are_not_in_the_schema",
        ),
    ),
    "migrations-without-the-advisory-lock": Removal(
        practice=25,
        path=source("db/migrate.py"),
        rewrites=(
            ('    connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), '
             '{"key": MIGRATION_LOCK_KEY})',
             '    connection.execute(text("SELECT 1"))'),
        ),
        proofs=(
            "tests/test_replicas.py::test_two_concurrent_migrate_commands_apply_the_schema_once",
        ),
    ),
    "reads-in-a-transaction": Removal(
        practice=26,
        path=source("db/reads.py"),
        rewrites=(
            ("                record = await driver.fetchrow(sql, *arguments)\n",
             "                async with driver.transaction():\n"
             "                    record = await driver.fetchrow(sql, *arguments)\n"),
        ),
        proofs=(
            "tests/test_read_path.py::test_a_read_is_one_round_trip_with_no_transaction_around_it",
        ),
    ),
    "driver-errors-of-the-hot-read-not-mapped": Removal(
        practice=26,
        path=source("errors.py"),
        rewrites=(
            ("    if isinstance(error, asyncpg.PostgresError):"
             "  # raised on the driver's connection (db/reads.py)\n"
             "        return _sqlstate_answer("
             "str(error.sqlstate or \"\"), connection_lost=False)\n",
             ""),
        ),
        proofs=(
            "tests/test_error_mapping.py::test_errors_of_the_hot_read_on_the_driver_connection_keep_their_answers",
        ),
    ),
    "reads-not-run-again-after-a-lost-connection": Removal(
        practice=26,
        path=source("db/reads.py"),
        rewrites=(
            ("        except ConnectionLostError:\n"
             "            return await self._fetch_one(sql, arguments)\n",
             "        except ConnectionLostError:\n            raise\n"),
        ),
        proofs=(
            "tests/test_read_path.py::test_reads_right_after_a_database_restart_all_succeed",
        ),
    ),
    "older-connections-not-suspected-after-a-loss": Removal(
        practice=26,
        path=source("db/reads.py"),
        rewrites=(("        self._liveness.connection_lost()\n", ""),),
        proofs=(
            "tests/test_read_path.py::test_reads_right_after_a_database_restart_all_succeed",
        ),
    ),
    "pre-ping-on-every-checkout": Removal(
        practice=26,
        path=source("db/engine.py"),
        rewrites=(
            ("        # No pool_pre_ping: see LivenessCheck and the module docstring.\n",
             "        pool_pre_ping=True,\n"),
            ("    (liveness or LivenessCheck()).install(engine)\n", ""),
        ),
        proofs=(
            "tests/test_read_path.py::test_a_read_is_one_round_trip_with_no_transaction_around_it",
            "tests/test_read_path.py::test_a_busy_connection_is_not_pinged_and_writes_keep_their_transaction",
        ),
    ),
    "no-ping-after-idleness": Removal(
        practice=26,
        path=source("db/engine.py"),
        rewrites=(
            ("        if time.monotonic() - returned_at < self.idle_seconds"
             " and returned_at > self._lost_at:\n",
             "        if True:\n"),
        ),
        proofs=(
            "tests/test_read_path.py::test_a_write_after_a_quiet_spell_and_a_restart_succeeds",
        ),
    ),
    "outbox-row-without-the-trace-context": Removal(
        practice=27,
        path=source("outbox/store.py"),
        rewrites=(("            trace_context=current_trace_context(),\n", ""),),
        proofs=(
            "tests/test_tracing.py::test_order_notification_continues_the_trace_of_the_request",
            "tests/test_tracing.py::test_notification_retry_from_the_poller_continues_the_trace_of_the_request",
        ),
        answers=(("tracing", "opentelemetry"),),
    ),
}  # fmt: skip


def catalog_section(number: int) -> str:
    text = CATALOG_SOURCE.read_text()
    found = re.search(rf"^## {number}\. .*?(?=^## |\Z)", text, re.M | re.S)
    assert found, f"the catalog has no section {number}"
    return found.group(0)


def proof_paragraph(section: str) -> str:
    found = re.search(r"\*\*Proofs?\.\*\*(.*?)(?=\*\*Pitfalls?\.\*\*|\Z)", section, re.S)
    assert found, section.splitlines()[0]
    return found.group(1)


@pytest.fixture(scope="module")
def pristine() -> Iterator[Callable[[tuple[tuple[str, str], ...]], Path]]:
    """One bake per set of answers and test process, copied for each removal (never run)."""
    bakes: dict[tuple[tuple[str, str], ...], Path] = {}
    folders: list[Path] = []

    def bake_once(answers: tuple[tuple[str, str], ...]) -> Path:
        if answers not in bakes:
            folders.append(fresh_workdir())
            bakes[answers] = bake_into(folders[-1], **dict(answers))
        return bakes[answers]

    yield bake_once
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def apply(project: Path, removal: Removal) -> None:
    (package,) = (project / "src").iterdir()
    target = project / removal.path.replace("<package>", package.name)
    text = target.read_text()
    for practice_code, naive_code in removal.rewrites:
        assert text.count(practice_code) == 1, (
            f"{removal.path} no longer holds exactly one {practice_code!r}: update this removal"
        )
        text = text.replace(practice_code, naive_code)
    target.write_text(text)


def failed_tests(report: Path) -> set[str]:
    """``tests/x.py::name`` of every test that failed or errored, parameters stripped."""
    failed = set()
    for case in ET.parse(report).iter("testcase"):
        if case.find("failure") is None and case.find("error") is None:
            continue
        module = case.get("classname", "").replace(".", "/") + ".py"
        failed.add(f"{module}::{case.get('name', '').split('[')[0]}")
    return failed


@pytest.mark.generated_suite
@pytest.mark.parametrize("name", sorted(REMOVALS))
def test_removing_the_practice_fails_its_named_proof(
    name: str,
    pristine: Callable[[tuple[tuple[str, str], ...]], Path],
    workdir: Path,
    tmp_path: Path,
) -> None:
    removal = REMOVALS[name]
    search = os.pathsep.join([os.environ.get("PATH", os.defpath), "/usr/sbin", "/usr/local/bin"])
    found = removal.needs is None or shutil.which(removal.needs, path=search)
    if not found:
        pytest.skip(f"{removal.needs} is not installed here (.ci/run installs it with apt-get)")
    named = proof_paragraph(catalog_section(removal.practice))
    assert [proof for proof in removal.proofs if f"`{proof}`" not in named] == []

    original = pristine(removal.answers)
    project = shutil.copytree(original, workdir / original.name)
    apply(project, removal)
    environment = {key: value for key, value in os.environ.items() if key != "TEST_DATABASE_URL"}
    report = tmp_path / "report.xml"
    finished = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", *nested_pytest_options(project), "-p", "no:xdist",
         f"--junitxml={report}", *removal.proofs],
        cwd=project, env=environment, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip

    output = finished.stdout[-4000:] + finished.stderr[-2000:]
    assert finished.returncode == 1, output  # 1: tests ran and some failed
    not_caught = [proof for proof in removal.proofs if proof not in failed_tests(report)]
    assert not_caught == [], output
