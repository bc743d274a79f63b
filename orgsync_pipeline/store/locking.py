"""How orgsync's writers keep out of each other's way, so that no two of them deadlock.

Every write to the synced tables first takes the *write turn*: a transaction-level advisory lock
(per schema) that the full sync, the webhook apply (inline or in a run) and on-demand syncs share.
A batch of webhook events locks rows in event order, which no sort can reconcile with a merge's
key order; taking turns can. A writer waits at most for one other write transaction: an apply
batch (milliseconds) or one table's merge of a full sync (seconds for millions of rows).

Within a turn, every write path locks ``organizations`` and ``profiles`` (parents) before
``organization_members``, then ``membership_tombstones``, then ``sync_quarantine``; within a table,
rows in key order: ``id`` for organizations and profiles, ``(organization_id, user_id)`` for memberships and
tombstones, ``(entity, record_key)`` for the quarantine. Merges get the order from ``ORDER BY`` in
their ``INSERT … SELECT``; updates and deletes lock their rows first with
:func:`lock_in_order`, then change exactly the rows locked.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection

from orgsync_pipeline.store.schema import organization_members, sync_quarantine

P = ParamSpec("P")
T = TypeVar("T")
WRITE_TURN_LOCK_CLASS = 0x6F726702  # with hashtext(current_schema()): one turn per schema


DRAIN_LOCK_CLASS = 0x6F726701  # with hashtext(current_schema()): one inbox drain at a time per schema


def drain_lock_key() -> tuple[sa.ColumnElement[int], sa.ColumnElement[int]]:
    """The session-level advisory lock key that lets one apply drain the inbox at a time."""
    return sa.cast(DRAIN_LOCK_CLASS, sa.Integer), sa.func.hashtext(sa.func.current_schema())


def take_write_turn(conn: Connection) -> None:
    """Wait for the write turn; it is held until this transaction ends (taking it again is free)."""
    key = sa.func.hashtext(sa.func.current_schema())
    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.cast(WRITE_TURN_LOCK_CLASS, sa.Integer), key)))


def in_write_turn(fn: Callable[Concatenate[Connection, P], T]) -> Callable[Concatenate[Connection, P], T]:
    """Make ``fn(conn, …)`` take the write turn in ``conn``'s transaction before it writes."""

    @functools.wraps(fn)
    def wrapper(conn: Connection, *args: P.args, **kwargs: P.kwargs) -> T:
        take_write_turn(conn)
        return fn(conn, *args, **kwargs)

    return wrapper  # type: ignore[return-value]  # functools.wraps' _Wrapped is that callable


MEMBERSHIP_ORDER = (organization_members.c.organization_id, organization_members.c.user_id)
QUARANTINE_ORDER = (sync_quarantine.c.entity, sync_quarantine.c.record_key)


def lock_in_order(
    conn: Connection,
    column: sa.Column[Any],
    *where: sa.ColumnElement[bool],
    order_by: Sequence[sa.ColumnElement[Any]],
    no_key: bool = False,
) -> list[Any]:
    """Lock the rows of ``column``'s table matching ``where``, one by one in ``order_by`` order, and
    return ``column`` of each (distinct, in that order).

    ``no_key`` takes ``FOR NO KEY UPDATE``, enough for an update that leaves the key alone, and
    compatible with the ``FOR KEY SHARE`` locks foreign-key checks of concurrent inserts take.
    """
    statement = (
        sa.select(column).where(*where).order_by(*order_by).with_for_update(of=column.table, key_share=no_key)
    )
    return list(dict.fromkeys(conn.execute(statement).scalars()))


def any_of(column: sa.Column[Any], values: Sequence[Any]) -> sa.ColumnElement[bool]:
    """``column = ANY(:values)`` with the array typed after the column."""
    return column == sa.any_(sa.bindparam(None, list(values), type_=pg.ARRAY(column.type)))


def delete_memberships_where(conn: Connection, *where: sa.ColumnElement[bool]) -> int:
    """Delete the memberships matching ``where``, locked first in key order; returns how many."""
    members = organization_members
    ids = lock_in_order(conn, members.c.id, *where, order_by=MEMBERSHIP_ORDER)
    if ids:
        conn.execute(sa.delete(members).where(any_of(members.c.id, ids)))
    return len(ids)


def delete_quarantined_where(conn: Connection, *where: sa.ColumnElement[bool]) -> int:
    """Delete the quarantined records matching ``where``, locked first in key order; returns how many."""
    ids = lock_in_order(conn, sync_quarantine.c.id, *where, order_by=QUARANTINE_ORDER)
    if ids:
        conn.execute(sa.delete(sync_quarantine).where(any_of(sync_quarantine.c.id, ids)))
    return len(ids)
