"""The service's app plus the naive order route, served by uvicorn for ``test_outbox_process.py``.

The naive route is what the service did before it had an outbox: write the order, then send
its notification from an in-memory background task (tracked by the supervisor, drained at
shutdown: every in-process practice applied). Only a real process can be killed, so the pitfall
test runs this app in one::

    python -m uvicorn --factory tests.in_memory_notify_app:create_app_with_in_memory_notify
"""

from __future__ import annotations

from fastapi import FastAPI, status

from {{ cookiecutter.package_name }}.api.deps import ResourcesDep
from {{ cookiecutter.package_name }}.api.schemas import OrderCreate, OrderOut, UserIdPath
from {{ cookiecutter.package_name }}.app import create_app
from {{ cookiecutter.package_name }}.db.queries import insert_order
from {{ cookiecutter.package_name }}.db.session import transaction

IN_MEMORY_ORDER_PATH = "/t/users/{user_id}/orders-in-memory"


def create_app_with_in_memory_notify() -> FastAPI:
    """The service's app, configured from the environment as the service is, plus the route."""
    app = create_app()

    @app.post(IN_MEMORY_ORDER_PATH, status_code=status.HTTP_201_CREATED)
    async def create_order_in_memory(
        body: OrderCreate, user_id: UserIdPath, resources: ResourcesDep
    ) -> OrderOut:
        async with transaction(resources.sessionmaker) as session:
            order = OrderOut.model_validate(
                await insert_order(session, user_id, body.item, body.quantity)
            )
        # The naive version: the only record that a notification is owed is this task.
        payload = {"user_id": user_id, "order_id": order.id}
        resources.supervisor.spawn(
            resources.upstreams.notify(payload), name=f"notify-order:{order.id}"
        )
        return order

    return app
