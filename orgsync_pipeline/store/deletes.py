"""Deletions on the write path: soft-deleted organizations and profiles, deleted memberships and
their tombstones (see :mod:`orgsync_pipeline.store.apply` for the rules every write follows).

Callers import these from :mod:`orgsync_pipeline.store.apply`, which re-exports them.
"""

from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any, Required, TypedDict, Unpack

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection

from orgsync_pipeline.rows import MembershipKey
from orgsync_pipeline.store.locking import delete_memberships_where, in_write_turn, lock_in_order
from orgsync_pipeline.store.schema import (
    membership_tombstones,
    organization_members,
    organizations,
    profiles,
)


def _text_array(values: Iterable[str | None]) -> sa.BindParameter[Sequence[str | None]]:
    array: pg.ARRAY[str | None] = pg.ARRAY(sa.Text)
    return sa.bindparam(None, list(values), type_=array)


def _written_before(target: sa.Table, written_before: datetime | None) -> sa.ColumnElement[bool]:
    if written_before is None:
        return sa.true()
    return sa.or_(target.c.synced_at.is_(None), target.c.synced_at < written_before)


def _soft_delete(
    conn: Connection,
    target: sa.Table,
    member_column: sa.Column[str],
    ids: Sequence[str],
    *,
    placeholder: dict[str, Callable[[sa.ColumnElement[Any]], sa.ColumnElement[Any]]],
    as_of: datetime,
    written_before: datetime | None = None,
    record_unseen: bool = False,
) -> list[str]:
    if not ids:
        return []
    id_array = _text_array(ids)
    if record_unseen:
        # A deletion of a row never seen still has to stop late, older data from creating it.
        unnested = sa.func.unnest(id_array).table_valued("id").render_derived()
        conn.execute(
            pg.insert(target)
            .from_select(
                ["id", *placeholder, "deleted_at", "synced_at"],
                sa.select(
                    unnested.c.id,
                    *(value(unnested.c.id) for value in placeholder.values()),
                    sa.literal(as_of),
                    sa.func.now(),
                ).order_by(unnested.c.id),
            )
            .on_conflict_do_nothing(index_elements=[target.c.id])
        )
    deleted = lock_in_order(
        conn,
        target.c.id,
        target.c.id == sa.any_(id_array),
        target.c.deleted_at.is_(None),
        sa.or_(target.c.updated_at.is_(None), target.c.updated_at <= as_of),
        _written_before(target, written_before),
        order_by=[target.c.id],
        no_key=True,
    )
    if deleted:
        conn.execute(
            sa.update(target)
            .where(target.c.id == sa.any_(_text_array(deleted)))
            .values(deleted_at=as_of, synced_at=sa.func.now())
        )
        delete_memberships_where(conn, member_column == sa.any_(_text_array(deleted)))
    return deleted


class SoftDeleteOptions(TypedDict, total=False):
    """The keyword arguments of :func:`delete_organizations` and :func:`delete_profiles`."""

    as_of: Required[datetime]
    written_before: datetime | None  # default None
    record_unseen: bool  # default False


@in_write_turn
def delete_organizations(
    conn: Connection, ids: Sequence[str], **options: Unpack[SoftDeleteOptions]
) -> list[str]:
    """Soft-delete organizations (``deleted_at = as_of``) and delete their memberships.

    Rows updated after ``as_of`` stay, and so do rows written since ``written_before`` (the full
    sync's listing start; default None). ``record_unseen`` (default False) keeps a deleted placeholder
    for an id never seen, so older events arriving later cannot create it. Returns the ids soft-deleted.
    """
    placeholder = {"name": lambda id_column: id_column}
    return _soft_delete(
        conn, organizations, organization_members.c.organization_id, ids, placeholder=placeholder, **options
    )


@in_write_turn
def delete_profiles(conn: Connection, ids: Sequence[str], **options: Unpack[SoftDeleteOptions]) -> list[str]:
    """Soft-delete profiles (``deleted_at = as_of``) and delete their memberships; as
    :func:`delete_organizations`."""
    return _soft_delete(conn, profiles, organization_members.c.user_id, ids, placeholder={}, **options)


@in_write_turn
def delete_memberships(
    conn: Connection,
    keys: Sequence[MembershipKey],
    *,
    as_of: datetime,
    written_before: datetime | None = None,
) -> int:
    """Delete memberships by (organization, user) and leave tombstones at ``as_of``.

    A membership updated after ``as_of`` (the user rejoined), or written since ``written_before``,
    stays and gets no tombstone. A key with no row gets one, so older data arriving later cannot
    create it. Returns the rows deleted.
    """
    if not keys:
        return 0
    unnested = (
        sa.func.unnest(
            _text_array(key.organization_id for key in keys),
            _text_array(key.user_id for key in keys),
            _text_array(key.clerk_membership_id for key in keys),
        )
        .table_valued("organization_id", "user_id", "clerk_membership_id")
        .render_derived()
    )
    target = organization_members
    deleted = delete_memberships_where(
        conn,
        target.c.organization_id == unnested.c.organization_id,
        target.c.user_id == unnested.c.user_id,
        sa.or_(target.c.updated_at.is_(None), target.c.updated_at <= as_of),
        _written_before(target, written_before),
    )

    _leave_tombstones(conn, unnested, as_of)
    return deleted


def _leave_tombstones(conn: Connection, unnested: sa.TableValuedAlias, as_of: datetime) -> None:
    """Tombstone each key in ``unnested`` that has no membership row (now), unless a newer
    tombstone exists."""
    target = organization_members
    unique_keys = (
        sa.select(unnested)
        .ext(pg.distinct_on(unnested.c.organization_id, unnested.c.user_id))
        .where(
            ~sa.exists().where(
                target.c.organization_id == unnested.c.organization_id,
                target.c.user_id == unnested.c.user_id,
            )
        )
        .order_by(unnested.c.organization_id, unnested.c.user_id)
        .subquery()
    )
    tombstone = pg.insert(membership_tombstones).from_select(
        ["organization_id", "user_id", "clerk_membership_id", "deleted_at"],
        sa.select(*unique_keys.c, sa.literal(as_of)).order_by(
            unique_keys.c.organization_id, unique_keys.c.user_id
        ),
    )
    conn.execute(
        tombstone.on_conflict_do_update(
            index_elements=[membership_tombstones.c.organization_id, membership_tombstones.c.user_id],
            set_={
                "deleted_at": tombstone.excluded.deleted_at,
                "clerk_membership_id": tombstone.excluded.clerk_membership_id,
            },
            where=tombstone.excluded.deleted_at > membership_tombstones.c.deleted_at,
        )
    )
