"""Durable work: the transactional outbox.

Whatever must happen because of a commit (telling the notifier about an order) is written as a
row of the ``outbox`` table in that same transaction (``store.enqueue``), so it exists exactly
when the data does: no crash can keep the one and lose the other. A dispatcher (``dispatcher``)
then sends it: once right after the commit, and from a polling loop that any number of replicas
run side by side, with retries, backoff, a dead-letter state and the cleanup of delivered rows.

In-memory fire-and-forget (``TaskSupervisor.spawn``) is enough for work that may be lost: a
cache warm-up, a metric, a best-effort hint. Work that must happen even if the process is
killed, or the other side is down for a while, belongs here.
"""
