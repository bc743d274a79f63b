"""THE write path: the only code that writes synced rows, tombstones and quarantine (deletions
live in :mod:`orgsync_pipeline.store.deletes` and are re-exported here).

The full sync and webhook events both call these functions, inside a transaction the caller
owns. The rules they enforce:

- **Newer wins**: a row changes only when the incoming ``updated_at`` is at least the stored one
  and its content differs, so replaying anything old writes nothing.
- **Deletes are final for what came before them**: organizations and profiles are soft-deleted
  (``deleted_at``); a deleted membership leaves a tombstone. Data no newer than the deletion never
  brings a row back; newer data (a user who rejoins) does.
- **No foreign-key failure from ordering**: a membership's organization and a stub of its user are
  written before it; a membership whose parent still does not exist is quarantined.
- **Bulk and quiet**: rows are staged with ``COPY`` and merged with one statement per table that
  only touches rows whose content changed.
- **No deadlocks between writers**: rows are locked in one order (sorted keys, parents before
  children; see :mod:`orgsync_pipeline.store.locking`).
"""

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection

from orgsync_pipeline.rows import (
    Entity,
    MembershipRow,
    OrganizationRow,
    ProfileRow,
    QuarantinedRecord,
)
from orgsync_pipeline.storable import storable_id, storable_json, storable_text
from orgsync_pipeline.store.deletes import delete_memberships, delete_organizations, delete_profiles
from orgsync_pipeline.store.locking import delete_quarantined_where, in_write_turn, take_write_turn
from orgsync_pipeline.store.schema import (
    ORG_ROLE,
    membership_tombstones,
    organization_members,
    organizations,
    profiles,
    sync_quarantine,
)
from orgsync_pipeline.store.staging import (
    listed_memberships,
    listed_organizations,
    listed_profiles,
    stage_memberships,
    stage_newest_listed,
    stage_organizations,
    stage_profiles,
    stage_rows,
)

RowT = TypeVar("RowT", OrganizationRow, ProfileRow, MembershipRow)

# The deletion functions live in store.deletes; they stay importable from here.
__all__ = [
    "ApplyCounts",
    "MembershipApplyCounts",
    "apply_listed",
    "apply_listed_memberships",
    "apply_memberships",
    "apply_organizations",
    "apply_profiles",
    "delete_memberships",
    "delete_organizations",
    "delete_profiles",
    "insert_profile_stubs",
    "prune_quarantine",
    "quarantine",
]


@dataclass
class ApplyCounts:
    """What one apply call did. ``unchanged`` counts rows identical to, older than, or deleted
    after what is stored."""

    received: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    quarantined: int = 0


@dataclass
class MembershipApplyCounts:
    memberships: ApplyCounts = field(default_factory=ApplyCounts)
    organizations: ApplyCounts = field(default_factory=ApplyCounts)
    profile_stubs: int = 0


def _ms_to_timestamptz(column: sa.ColumnElement[int]) -> sa.ColumnElement[datetime]:
    return sa.func.orgsync_ms_to_timestamptz(column, type_=sa.DateTime(timezone=True))


def _newest_per_key(rows: Iterable[RowT], key: Callable[[RowT], object]) -> list[RowT]:
    """One row per key, the newest by ``updated_at`` (a batch may repeat a record)."""
    newest: dict[object, RowT] = {}
    for row in rows:
        current = newest.get(key(row))
        if current is None or (row.updated_at or -1) >= (current.updated_at or -1):
            newest[key(row)] = row
    return list(newest.values())


def _should_write(
    target: sa.Table, incoming: Mapping[str, sa.ColumnElement[Any]], compared: Sequence[str]
) -> sa.ColumnElement[bool]:
    """Whether ``incoming`` replaces the stored row: it is at least as new (or orgsync never wrote
    the stored row: adopted data, a stub without Clerk timestamps), a deletion of the stored row is
    not newer than it, and its content differs."""
    newer = sa.or_(
        target.c.synced_at.is_(None),
        target.c.updated_at.is_(None),
        incoming["updated_at"] >= target.c.updated_at,
    )
    not_deleted_after = (
        sa.or_(target.c.deleted_at.is_(None), incoming["updated_at"] > target.c.deleted_at)
        if "deleted_at" in target.c
        else sa.true()
    )
    differs = sa.tuple_(*(target.c[name] for name in compared)).is_distinct_from(
        sa.tuple_(*(incoming[name] for name in compared))
    )
    return sa.and_(newer, not_deleted_after, differs)


def _merge(
    conn: Connection,
    target: sa.Table,
    key: Sequence[str],
    values: dict[str, sa.ColumnElement[Any]],
    source: sa.Select[*tuple[Any, ...]],
    compared: Sequence[str],
    received: int,
) -> ApplyCounts:
    """``INSERT … SELECT … ON CONFLICT (key) DO UPDATE … WHERE`` writing only new and changed rows.

    Incoming rows that would change nothing are filtered out before the insert, so they never
    reach the conflict path, which would lock (and so write to) every matching row.
    """
    unchanged = (
        sa.exists()
        .where(*(target.c[name] == values[name] for name in key))
        .where(sa.not_(_should_write(target, values, compared)))
    )
    source = source.add_columns(*values.values()).where(~unchanged).order_by(*(values[name] for name in key))
    insert = pg.insert(target).from_select(list(values), source)
    excluded = insert.excluded
    statement = insert.on_conflict_do_update(
        index_elements=[target.c[name] for name in key],
        set_={name: excluded[name] for name in values if name not in key},
        # Checked again: a concurrent writer may have changed the row since the filter ran.
        where=_should_write(target, {name: excluded[name] for name in values}, compared),
    ).returning(_WAS_INSERTED)
    # Counted in the database: a million RETURNING rows would otherwise be a million Python objects.
    written = statement.cte("written")
    inserted, changed = conn.execute(
        sa.select(sa.func.count().filter(written.c.inserted), sa.func.count()).select_from(written)
    ).one()
    return ApplyCounts(
        received=received, inserted=inserted, updated=changed - inserted, unchanged=received - changed
    )


# xmax is 0 only on a freshly inserted tuple: tells inserts from updates in the merge's RETURNING.
_WAS_INSERTED = sa.literal_column("(xmax = 0)", type_=sa.Boolean).label("inserted")


def _merge_entity(
    conn: Connection, target: sa.Table, stage: sa.Table, content: Sequence[str], received: int
) -> ApplyCounts:
    """Merge a staged organizations/profiles batch into ``target`` (newer wins, no resurrection)."""
    values: dict[str, sa.ColumnElement[Any]] = {name: stage.c[name] for name in ("id", *content)}
    values["created_at"] = _ms_to_timestamptz(stage.c.created_at)
    values["updated_at"] = _ms_to_timestamptz(stage.c.updated_at)
    values["deleted_at"] = sa.null()
    values["synced_at"] = sa.func.now()
    compared = [*content, "created_at", "updated_at", "deleted_at"]
    return _merge(conn, target, ["id"], values, sa.select(), compared, received)


def _release_quarantine(conn: Connection, entity: Entity, stage: sa.Table) -> None:
    """A record that validates now leaves the quarantine."""
    delete_quarantined_where(
        conn, sync_quarantine.c.entity == entity, sync_quarantine.c.clerk_id.in_(sa.select(stage.c.id))
    )


ORGANIZATION_CONTENT = ("name", "slug", "image_url", "public_metadata")
PROFILE_CONTENT = ("email", "first_name", "last_name", "image_url")


@in_write_turn
def apply_organizations(conn: Connection, rows: Sequence[OrganizationRow]) -> ApplyCounts:
    """Upsert validated organizations: inserts new ones, updates changed ones that are newer."""
    received = stage_rows(conn, stage_organizations, _newest_per_key(rows, lambda row: row.id))
    return _merge_staged_entity(conn, Entity.ORGANIZATION, received)


@in_write_turn
def apply_profiles(conn: Connection, rows: Sequence[ProfileRow]) -> ApplyCounts:
    """Upsert validated profiles (Clerk users): inserts new ones, updates changed ones that are newer."""
    received = stage_rows(conn, stage_profiles, _newest_per_key(rows, lambda row: row.id))
    return _merge_staged_entity(conn, Entity.PROFILE, received)


def apply_listed(conn: Connection, entity: Entity) -> ApplyCounts:
    """Upsert a full sync's staged listing of organizations or profiles (see :mod:`.staging`): the newest
    version of each record, unless a newer version of it failed validation."""
    merge = _ENTITY_MERGES[entity]
    received = stage_newest_listed(conn, merge.stage, merge.listed, ["id"], record_key="id")
    take_write_turn(conn)  # after staging: the turn is held only while the synced tables are written
    return _merge_staged_entity(conn, entity, received)


def _merge_staged_entity(conn: Connection, entity: Entity, received: int) -> ApplyCounts:
    """Merge the staged organizations or profiles, then release the quarantined records that now validate."""
    if not received:
        return ApplyCounts()
    merge = _ENTITY_MERGES[entity]
    counts = _merge_entity(conn, merge.target, merge.stage, merge.content, received)
    _release_quarantine(conn, entity, merge.stage)
    return counts


@dataclass(frozen=True)
class _EntityMerge:
    """Where an entity's rows are staged (per apply, per full-sync listing) and merged, and what they hold."""

    target: sa.Table
    stage: sa.Table
    listed: sa.Table
    content: tuple[str, ...]


_ENTITY_MERGES = {
    Entity.ORGANIZATION: _EntityMerge(
        organizations, stage_organizations, listed_organizations, ORGANIZATION_CONTENT
    ),
    Entity.PROFILE: _EntityMerge(profiles, stage_profiles, listed_profiles, PROFILE_CONTENT),
}


@in_write_turn
def insert_profile_stubs(conn: Connection, stubs: Sequence[ProfileRow]) -> int:
    """Create profiles that do not exist yet from a membership's ``public_user_data``.

    A stub has no Clerk timestamps, so the user's own record replaces it whenever it arrives; an
    existing profile (deleted or not) is never touched.
    """
    received = stage_rows(conn, stage_profiles, _newest_per_key(stubs, lambda row: row.id))
    return _insert_staged_stubs(conn) if received else 0


def _insert_staged_stubs(conn: Connection) -> int:
    stage = stage_profiles
    columns = ("id", "email", "first_name", "last_name", "image_url")
    statement = (
        pg.insert(profiles)
        .from_select(
            [*columns, "synced_at"],
            sa.select(*(stage.c[name] for name in columns), sa.func.now())
            .where(~sa.exists().where(profiles.c.id == stage.c.id))
            .order_by(stage.c.id),
        )
        .on_conflict_do_nothing(index_elements=[profiles.c.id])
        .returning(profiles.c.id)
    )
    return len(conn.execute(statement).all())


@in_write_turn
def apply_memberships(
    conn: Connection,
    rows: Sequence[MembershipRow],
    *,
    organizations_first: Sequence[OrganizationRow] = (),
    profile_stubs: Sequence[ProfileRow] = (),
    source: str,
    bulk_load: bool = False,
) -> MembershipApplyCounts:
    """Upsert validated memberships after their organizations and user stubs.

    A membership is skipped (counted unchanged) when a tombstone or its deleted organization or
    user is at least as new as it; it is quarantined when its organization or user does not exist.
    Locks follow the one order of :mod:`orgsync_pipeline.store.locking`: organizations, profiles,
    memberships, then the quarantine. ``bulk_load`` (as the full sync loads): a batch of at least
    ``BULK_LOAD_MIN_ROWS`` into an empty table is inserted with the table's indexes built afterwards.
    """
    staged = MembershipStages(
        organizations=stage_rows(
            conn, stage_organizations, _newest_per_key(organizations_first, lambda r: r.id)
        ),
        profile_stubs=stage_rows(conn, stage_profiles, _newest_per_key(profile_stubs, lambda r: r.id)),
        memberships=stage_rows(
            conn, stage_memberships, _newest_per_key(rows, lambda r: (r.organization_id, r.user_id))
        ),
    )
    return _merge_staged_memberships(conn, staged, source=source, bulk_load=bulk_load)


def apply_listed_memberships(conn: Connection, *, source: str) -> MembershipApplyCounts:
    """Upsert a full sync's staged membership listing (see :mod:`.staging`) with its organizations and
    user stubs: the newest version of each, unless a newer version of the membership failed validation."""
    staged = MembershipStages(
        organizations=stage_newest_listed(
            conn, stage_organizations, listed_organizations, ["id"], record_key=None
        ),
        profile_stubs=stage_newest_listed(conn, stage_profiles, listed_profiles, ["id"], record_key=None),
        memberships=stage_newest_listed(
            conn, stage_memberships, listed_memberships, ["organization_id", "user_id"], record_key="id"
        ),
    )
    take_write_turn(conn)  # after staging: the turn is held only while the synced tables are written
    return _merge_staged_memberships(conn, staged, source=source, bulk_load=True)


@dataclass(frozen=True)
class MembershipStages:
    """How many rows each stage of a membership apply holds."""

    organizations: int
    profile_stubs: int
    memberships: int


def _merge_staged_memberships(
    conn: Connection, staged: MembershipStages, *, source: str, bulk_load: bool = False
) -> MembershipApplyCounts:
    result = MembershipApplyCounts()
    if staged.organizations:
        result.organizations = _merge_entity(
            conn, organizations, stage_organizations, ORGANIZATION_CONTENT, staged.organizations
        )
    if staged.profile_stubs:
        result.profile_stubs = _insert_staged_stubs(conn)
    if staged.memberships:
        result.memberships = _merge_memberships(conn, staged.memberships, source=source, bulk_load=bulk_load)
    if staged.organizations:
        _release_quarantine(conn, Entity.ORGANIZATION, stage_organizations)
    return result


def _merge_memberships(conn: Connection, received: int, *, source: str, bulk_load: bool) -> ApplyCounts:
    stage = stage_memberships
    quarantined = _orphans(conn, stage)
    into_empty = bulk_load and received >= BULK_LOAD_MIN_ROWS and _defer_indexes(conn, organization_members)
    updated_at = _ms_to_timestamptz(stage.c.updated_at)
    values: dict[str, sa.ColumnElement[Any]] = {
        "organization_id": stage.c.organization_id,
        "user_id": stage.c.user_id,
        "clerk_membership_id": stage.c.id,
        "role": sa.cast(stage.c.role, ORG_ROLE),
        "clerk_role": stage.c.clerk_role,
        "joined_at": _ms_to_timestamptz(stage.c.created_at),
        "updated_at": updated_at,
        "synced_at": sa.func.now(),
    }
    alive = (
        sa.select()
        .select_from(stage)
        .join(organizations, organizations.c.id == stage.c.organization_id)
        .join(profiles, profiles.c.id == stage.c.user_id)
        .where(
            sa.or_(organizations.c.deleted_at.is_(None), organizations.c.deleted_at < updated_at),
            sa.or_(profiles.c.deleted_at.is_(None), profiles.c.deleted_at < updated_at),
            ~sa.exists().where(
                membership_tombstones.c.organization_id == stage.c.organization_id,
                membership_tombstones.c.user_id == stage.c.user_id,
                membership_tombstones.c.deleted_at >= updated_at,
            ),
        )
    )
    compared = ("clerk_membership_id", "role", "clerk_role", "joined_at", "updated_at")
    if into_empty:
        counts = _load_into_empty(conn, organization_members, values, alive, received)
    else:
        counts = _merge(
            conn, organization_members, ["organization_id", "user_id"], values, alive, compared, received
        )
    counts.unchanged -= len(quarantined)
    counts.quarantined = quarantine(conn, quarantined, source=source)
    delete_quarantined_where(
        conn,
        sync_quarantine.c.entity == Entity.MEMBERSHIP,
        sync_quarantine.c.clerk_id.in_(
            sa.select(organization_members.c.clerk_membership_id).where(
                organization_members.c.clerk_membership_id.in_(sa.select(stage.c.id))
            )
        ),
    )
    return counts


# A full sync's membership batch at least this large, into an empty table, is loaded with the
# table's indexes and foreign keys built afterwards (2.4x faster at a million rows, bench/bench_apply.py);
# below it the DDL and the locks it takes would cost more than they save.
BULK_LOAD_MIN_ROWS = 50_000


def _defer_indexes(conn: Connection, target: sa.Table) -> bool:
    """Whether ``target`` was empty, is now locked and has its indexes and foreign keys dropped, to be
    built again by ``orgsync_restore_indexes()`` in this transaction (sql/0007_bulk_load.sql). False
    (and nothing done) if it holds rows, this role does not own it, or its readers hold it for more
    than 2 s."""
    deferred = conn.execute(
        sa.select(sa.func.orgsync_defer_indexes(sa.cast(sa.literal(target.name), pg.REGCLASS)))
    ).scalar_one()
    return bool(deferred)


def _load_into_empty(
    conn: Connection,
    target: sa.Table,
    values: dict[str, sa.ColumnElement[Any]],
    source: sa.Select[*tuple[Any, ...]],
    received: int,
) -> ApplyCounts:
    """Insert the rows into ``target``, empty, locked and without its indexes (:func:`_defer_indexes`),
    then build the indexes and foreign keys again."""
    conn.execute(pg.insert(target).from_select(list(values), source.add_columns(*values.values())))
    # Counted afterwards (the table was empty and stays locked): RETURNING would hold every row.
    inserted = conn.execute(sa.select(sa.func.count()).select_from(target)).scalar_one()
    conn.execute(sa.select(sa.func.orgsync_restore_indexes()))
    return ApplyCounts(received=received, inserted=inserted, unchanged=received - inserted)


def _orphans(conn: Connection, stage: sa.Table) -> list[QuarantinedRecord]:
    """Staged memberships whose organization or user does not exist, as quarantine records."""
    # Outer joins, not ``NOT EXISTS … OR NOT EXISTS``: PostgreSQL runs an OR of two subqueries as an
    # index probe per staged row, and outer joins as two hash joins (seconds less per million rows).
    orphans = conn.execute(
        sa.select(stage)
        .outerjoin(organizations, organizations.c.id == stage.c.organization_id)
        .outerjoin(profiles, profiles.c.id == stage.c.user_id)
        .where(sa.or_(organizations.c.id.is_(None), profiles.c.id.is_(None)))
    ).all()
    return [
        QuarantinedRecord(
            entity=Entity.MEMBERSHIP,
            clerk_id=orphan.id,
            reason=(
                f"organization {orphan.organization_id} or user {orphan.user_id} does not exist "
                "(its own record failed validation or has not been seen yet)"
            ),
            payload=orphan._asdict(),
        )
        for orphan in orphans
    ]


@in_write_turn
def quarantine(conn: Connection, records: Sequence[QuarantinedRecord], *, source: str) -> int:
    """Keep records that failed validation, with their reasons; re-seeing one refreshes its row."""
    if not records:
        return 0
    statement = pg.insert(sync_quarantine)
    statement = statement.on_conflict_do_update(
        index_elements=[sync_quarantine.c.entity, sync_quarantine.c.record_key],
        set_={
            "reason": statement.excluded.reason,
            "payload": statement.excluded.payload,
            "source": statement.excluded.source,
            "last_seen_at": sa.func.now(),
        },
    )
    conn.execute(
        statement,
        [
            {
                "entity": record.entity,
                "clerk_id": storable_id(record.clerk_id),
                "reason": storable_text(record.reason),
                "payload": _jsonable(record.payload),
                "source": source,
            }
            for record in _unique_records(records)
        ],
    )
    return len(records)


@in_write_turn
def prune_quarantine(conn: Connection, entity: Entity, *, not_seen_since: datetime) -> int:
    """After a complete listing: drop quarantined records of ``entity`` the listing no longer had."""
    return delete_quarantined_where(
        conn, sync_quarantine.c.entity == entity, sync_quarantine.c.last_seen_at < not_seen_since
    )


def _unique_records(records: Sequence[QuarantinedRecord]) -> list[QuarantinedRecord]:
    # One INSERT … ON CONFLICT cannot touch a row twice; the last record for a key wins.
    by_key: dict[tuple[str, str], QuarantinedRecord] = {}
    for record in records:
        key = storable_id(record.clerk_id) or json.dumps(_jsonable(record.payload), sort_keys=True)
        by_key[(record.entity, key)] = record
    return list(by_key.values())


def _jsonable(payload: object) -> object:
    # The quarantine must take any record, even one holding NUL, lone surrogates or deep nesting.
    return storable_json(payload)
