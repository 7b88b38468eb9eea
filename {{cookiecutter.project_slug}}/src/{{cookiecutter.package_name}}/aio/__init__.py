"""A small asyncio toolkit: the standard library only, one practice per module.

Every module stands on its own: none imports another, nor anything else of this project, so
any one file can be copied into another codebase as it is.

- ``fanout``: run named sources concurrently, all or nothing (``asyncio.TaskGroup``); the first
  failure cancels the rest and comes out as one error that says which source failed.
- ``settled``: run named sources concurrently and keep every outcome, a value or an error per
  name, without ever turning the caller's cancellation into a result.
- ``deadlines``: a total deadline for one outbound call (body included) that names what
  overran, and a pure ASGI middleware that answers 504 when a whole request overruns.
- ``background``: a supervisor for fire-and-forget and shielded work: strong references,
  failures logged at once with the spawner's context, and a bounded drain at shutdown.
- ``debug``: what a hung process is doing: a dump of every task with its chain of awaits, signal
  handlers (SIGUSR1: task dump, SIGUSR2: every thread's stack, even while the loop is blocked)
  and a loop-lag heartbeat for production.
"""
