"""Idempotency keys: a retried POST gets the first try's result and creates nothing new.

A client that got no answer (a 504, a dropped connection) cannot know whether its order was
stored. With an ``Idempotency-Key`` header it can simply send the same request again:

- the key is stored with the order, in the order's own transaction, under a primary key on
  (user, key): the order and the record that it was made for this key commit together or not
  at all, and two transactions cannot both store the same key;
- a request first takes a transaction-scoped advisory lock on its key. If another transaction
  holds it, the first try is still in flight: 409 at once (with ``Retry-After``) instead of a
  wait on the other transaction's row lock;
- with the lock held, a stored key answers with its order (a replay), or 422 when the request
  body differs from the one the key was first used with;
- keys expire after ``IDEMPOTENCY_KEY_TTL``; the outbox dispatcher's cleanup deletes them, and
  an expired key that is still there counts as unused.

The header's value is a Structured Field string (``"..."``, as the IETF draft says); a bare
token is accepted too, since that is what most clients send.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, func, insert, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from ..errors import ServiceError
from .models import IdempotencyKey

MAX_KEY_LENGTH = 255
# RFC 9651 (Structured Field Values): an sf-token's characters. The first may be a digit here,
# so that a bare UUID is accepted.
_TOKEN = re.compile(r"[A-Za-z0-9*][!#$%&'*+\-.^_`|~0-9A-Za-z:/]*")
# Characters an sf-string may hold unescaped: printable ASCII except '"' and '\'.
_STRING_CHARACTER = re.compile(r"[\x20-\x21\x23-\x5b\x5d-\x7e]")
# Mixed into the lock's hash, so that a clash with other advisory locks of the database is as
# unlikely as a clash between two keys (2**-64); either would only cost a needless 409.
_LOCK_NAMESPACE = b"idempotency-key:orders:"


class InvalidIdempotencyKeyError(ServiceError):
    status_code = 400
    code = "invalid_idempotency_key"


class IdempotencyKeyInUseError(ServiceError):
    """The first request with this key has not finished yet."""

    status_code = 409
    code = "idempotency_key_in_use"
    headers: Mapping[str, str] | None = {"Retry-After": "1"}


class IdempotencyKeyReusedError(ServiceError):
    """The key was first used with another request body."""

    status_code = 422
    code = "idempotency_key_reused"


def parse_idempotency_key(raw: str) -> str:
    """The key in an ``Idempotency-Key`` header value: a quoted sf-string or a bare token."""
    value = raw.strip(" \t")
    if value.startswith('"'):
        key = _unquote(value)
    elif _TOKEN.fullmatch(value):
        key = value
    else:
        raise InvalidIdempotencyKeyError(
            'Idempotency-Key must be a quoted string ("...") or a token of letters, digits '
            "and !#$%&'*+-.^_`|~:/"
        )
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise InvalidIdempotencyKeyError(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} characters long"
        )
    return key


def _unquote(value: str) -> str:
    characters: list[str] = []
    position = 1
    while position < len(value):
        character = value[position]
        if character == "\\" and value[position + 1 : position + 2] in {'"', "\\"}:
            characters.append(value[position + 1])
            position += 2
        elif character == '"':
            if position != len(value) - 1:
                break  # something after the closing quote (parameters are not accepted)
            return "".join(characters)
        elif _STRING_CHARACTER.fullmatch(character):
            characters.append(character)
            position += 1
        else:
            break
    raise InvalidIdempotencyKeyError(
        "Idempotency-Key is not a valid quoted string: printable ASCII between double quotes, "
        'with \\" and \\\\ as the only escapes'
    )


def request_fingerprint(body: Mapping[str, Any]) -> str:
    """A stable hash of a (validated) request body: equal bodies, equal fingerprints."""
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _lock_id(user_id: int, key: str) -> int:
    digest = hashlib.blake2b(_LOCK_NAMESPACE + f"{user_id}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def claim_key(
    session: AsyncSession, *, user_id: int, key: str, fingerprint: str
) -> int | None:
    """Take ``key`` for this transaction; return the order it already stands for, if any.

    None means the key is unused (or expired): the caller places the order and calls
    ``record_key`` in the same transaction. Raises ``IdempotencyKeyInUseError`` while another
    transaction holds the key, ``IdempotencyKeyReusedError`` for a stored key whose body differs.
    """
    locked = await session.scalar(select(func.pg_try_advisory_xact_lock(_lock_id(user_id, key))))
    if not locked:
        raise IdempotencyKeyInUseError(
            "a request with this Idempotency-Key is still being processed; retry shortly"
        )
    stored = (
        await session.execute(
            select(
                IdempotencyKey.fingerprint,
                IdempotencyKey.order_id,
                (IdempotencyKey.expires_at <= func.now()).label("expired"),
            ).where(IdempotencyKey.user_id == user_id, IdempotencyKey.key == key)
        )
    ).one_or_none()
    if stored is None:
        return None
    if stored.expired:
        await session.execute(
            delete(IdempotencyKey).where(
                IdempotencyKey.user_id == user_id, IdempotencyKey.key == key
            )
        )
        return None
    if stored.fingerprint != fingerprint:
        raise IdempotencyKeyReusedError(
            "this Idempotency-Key was already used with a different request body; "
            "send a new key for a new order"
        )
    order_id: int = stored.order_id
    return order_id


async def record_key(
    session: AsyncSession,
    *,
    user_id: int,
    key: str,
    fingerprint: str,
    order_id: int,
    ttl: float,
) -> None:
    """Store ``key`` for ``order_id`` in the caller's transaction, valid for ``ttl`` seconds."""
    await session.execute(
        insert(IdempotencyKey).values(
            user_id=user_id,
            key=key,
            fingerprint=fingerprint,
            order_id=order_id,
            expires_at=func.now() + timedelta(seconds=ttl),
        )
    )


async def delete_expired_keys(session: AsyncSession, limit: int) -> int:
    """Delete up to ``limit`` expired keys; return how many (a cleanup job of the dispatcher)."""
    expired = (
        select(IdempotencyKey.user_id, IdempotencyKey.key)
        .where(IdempotencyKey.expires_at <= func.now())
        .limit(limit)
    )
    result = await session.execute(
        delete(IdempotencyKey)
        .where(tuple_(IdempotencyKey.user_id, IdempotencyKey.key).in_(expired))
        .returning(IdempotencyKey.key)
    )
    return len(result.all())
