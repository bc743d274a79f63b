"""The full sync of one table: list it from Clerk, validate, apply, then reconcile deletions.

Deletions need proof. They are computed only from a listing that completed (a failed page raises
before anything is deleted), only for rows not written since the listing began, never for more
than ``ORGSYNC_MAX_DELETE_FRACTION`` of a table, and only after Clerk confirms each row is gone
with a lookup by id (offset pages can shift while Clerk changes under the crawl).
"""

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import partial
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from orgsync_pipeline.clerk.client import ClerkClient
from orgsync_pipeline.clerk.paging import run_concurrently
from orgsync_pipeline.rows import Entity, MembershipKey, QuarantinedRecord
from orgsync_pipeline.settings import Settings
from orgsync_pipeline.store import apply
from orgsync_pipeline.store.retry import run_in_transaction
from orgsync_pipeline.store.schema import organization_members, organizations, profiles
from orgsync_pipeline.store.staging import (
    LISTING_TABLES,
    analyze,
    chunked,
    copy_rows,
    listed_memberships,
    listed_organizations,
    listed_profiles,
    listing_seen,
    listing_session,
    seen_count,
)
from orgsync_pipeline.validation import (
    Validated,
    membership_pair,
    record_id,
    record_updated_at,
    validate_memberships,
    validate_organizations,
    validate_profiles,
)

SOURCE = "full_sync"
# Advisory lock (class, schema hash): one full sync at a time per orgsync schema. The class is any
# constant, the same for every orgsync process using the database.
FULL_SYNC_LOCK_CLASS = 0x6F726753
# A second full sync waits this long for the first to finish a table, then skips it.
FULL_SYNC_LOCK_WAIT_SECONDS = 60.0
SKIPPED = "another clerk_full_sync is running"

Log = logging.Logger | logging.LoggerAdapter[Any]


class DeletionGuardError(RuntimeError):
    """A full sync would delete more of a table than ``ORGSYNC_MAX_DELETE_FRACTION`` allows."""


@dataclass
class SyncReport:
    """What one table's full sync did; becomes the asset's materialization metadata."""

    table: str
    fetched: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    deleted: int = 0
    quarantined: int = 0
    duration_seconds: float = 0.0
    details: dict[str, int] = field(default_factory=dict)
    # Why this sync did nothing (another full sync held the lock), or None.
    skipped: str | None = None

    def metadata(self) -> dict[str, int | float | str]:
        if self.skipped:
            return {"skipped": self.skipped}
        return {
            "rows_fetched": self.fetched,
            "rows_inserted": self.inserted,
            "rows_updated": self.updated,
            "rows_unchanged": self.unchanged,
            "rows_deleted": self.deleted,
            "rows_quarantined": self.quarantined,
            "duration_seconds": round(self.duration_seconds, 3),
            **self.details,
        }


@contextmanager
def full_sync_lock(engine: Engine, table: str, *, wait_seconds: float, log: Log) -> Iterator[bool]:
    """Hold the full sync's session-level advisory lock for the block, so two full syncs never
    sync a table at once; yields False when another one kept it for ``wait_seconds`` (the caller
    skips). The lock lives on a connection of its own: released on unlock, or by the server when
    this process dies."""
    deadline = time.monotonic() + wait_seconds
    with engine.connect() as conn:
        while not conn.execute(sa.select(sa.func.pg_try_advisory_lock(*_full_sync_lock_key()))).scalar_one():
            conn.commit()
            if time.monotonic() >= deadline:
                log.warning("%s; skipped the %s sync after waiting %.0f s", SKIPPED, table, wait_seconds)
                yield False
                return
            time.sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        conn.commit()
        try:
            yield True
        finally:
            conn.execute(sa.select(sa.func.pg_advisory_unlock(*_full_sync_lock_key())))
            conn.commit()


def _full_sync_lock_key() -> tuple[sa.ColumnElement[int], ...]:
    return (sa.cast(sa.literal(FULL_SYNC_LOCK_CLASS), sa.Integer), sa.func.hashtext(sa.func.current_schema()))


# Records validated and staged at a time: what a full sync holds in memory, whatever the instance's size.
CHUNK_RECORDS = 10_000


@dataclass(frozen=True)
class SoftDeletedListing:
    """How one soft-deleted table is listed, validated, staged, looked up and deleted."""

    table: sa.Table
    entity: Entity
    listed: sa.Table
    pages: Callable[[ClerkClient], Iterator[list[Any]]]
    validate: Callable[[list[Any]], Validated[Any]]
    lookup: Callable[[ClerkClient, str], Any]
    delete: Callable[..., list[str]]


ORGANIZATIONS = SoftDeletedListing(
    table=organizations,
    entity=Entity.ORGANIZATION,
    listed=listed_organizations,
    pages=ClerkClient.iter_organization_pages,
    validate=validate_organizations,
    lookup=ClerkClient.get_organization,
    delete=apply.delete_organizations,
)
PROFILES = SoftDeletedListing(
    table=profiles,
    entity=Entity.PROFILE,
    listed=listed_profiles,
    pages=ClerkClient.iter_user_pages,
    validate=validate_profiles,
    lookup=ClerkClient.get_user,
    delete=apply.delete_profiles,
)


SOFT_DELETED_LISTINGS = {spec.table.name: spec for spec in (ORGANIZATIONS, PROFILES)}


def full_sync(
    table: str,
    engine: Engine,
    clerk: ClerkClient,
    settings: Settings,
    log: Log,
    *,
    lock_wait_seconds: float = FULL_SYNC_LOCK_WAIT_SECONDS,
) -> SyncReport:
    """Make ``table`` (organizations, profiles or organization_members) match Clerk's complete listing
    of it. Skips, saying so in the report, when another full sync holds it past ``lock_wait_seconds``."""
    with full_sync_lock(engine, table, wait_seconds=lock_wait_seconds, log=log) as held:
        if not held:
            return SyncReport(table, skipped=SKIPPED)
        if table == organization_members.name:
            return _sync_memberships(engine, clerk, settings, log)
        return _sync_soft_deleted_table(engine, clerk, settings, log, SOFT_DELETED_LISTINGS[table])


sync_organizations = partial(full_sync, organizations.name)
sync_profiles = partial(full_sync, profiles.name)
sync_memberships = partial(full_sync, organization_members.name)


def _sync_soft_deleted_table(
    engine: Engine, clerk: ClerkClient, settings: Settings, log: Log, spec: SoftDeletedListing
) -> SyncReport:
    started = time.monotonic()
    listing_started_at = database_now(engine)  # before the first page: ``pages`` is lazy
    with listing_session(engine) as conn:

        def stage_chunk(records: list[Any]) -> list[QuarantinedRecord]:
            validated = spec.validate(records)
            copy_rows(conn, listing_seen, ((record_id(r), None, None, record_updated_at(r)) for r in records))
            copy_rows(conn, spec.listed, validated.rows)
            return validated.quarantined

        quarantined = stage_listing(engine, conn, spec.pages(clerk), stage_chunk)
        counts = run_in_transaction(
            conn,
            lambda c: _merge_listing(
                c, partial(apply.apply_listed, entity=spec.entity), spec.entity, listing_started_at
            ),
            what=f"{spec.table.name} full sync",
        )
        deleted = reconcile_soft_deletes(
            engine,
            conn,
            spec,
            clerk,
            listing_started_at=listing_started_at,
            max_fraction=settings.max_delete_fraction,
            log=log,
        )
        fetched = seen_count(conn)
    return SyncReport(
        table=spec.table.name,
        fetched=fetched,
        inserted=counts.inserted,
        updated=counts.updated,
        unchanged=counts.unchanged,
        deleted=deleted,
        quarantined=quarantined,
        duration_seconds=time.monotonic() - started,
    )


CountsT = TypeVar("CountsT")


def _merge_listing(
    conn: Connection, merge: Callable[[Connection], CountsT], entity: Entity, listing_started_at: datetime
) -> CountsT:
    """In one transaction: merge the staged listing, then drop quarantined records it no longer had."""
    counts = merge(conn)
    apply.prune_quarantine(conn, entity, not_seen_since=listing_started_at)
    return counts


def stage_listing(
    engine: Engine,
    conn: Connection,
    pages: Iterable[list[Any]],
    stage_chunk: Callable[[list[Any]], list[QuarantinedRecord]],
) -> int:
    """Stage a listing chunk by chunk in ``conn``'s listing tables as its pages arrive; quarantine each
    chunk's invalid records at once. Returns how many were quarantined. Raises, with nothing merged,
    when a page fails."""
    quarantined = 0
    for chunk in chunked(pages, CHUNK_RECORDS):
        with conn.begin():
            bad = stage_chunk(collect_listing([chunk]))
        if bad:
            run_in_transaction(
                engine, partial(apply.quarantine, records=bad, source=SOURCE), what="quarantine"
            )
            quarantined += len(bad)
    with conn.begin():
        for table in LISTING_TABLES:
            analyze(conn, table)
    return quarantined


def _sync_memberships(engine: Engine, clerk: ClerkClient, settings: Settings, log: Log) -> SyncReport:
    started = time.monotonic()
    listing_started_at = database_now(engine)
    with listing_session(engine) as conn:

        def stage_chunk(records: list[Any]) -> list[QuarantinedRecord]:
            validated = validate_memberships(records, settings.role_map)
            seen = ((record_id(r), *membership_pair(r), record_updated_at(r)) for r in records)
            copy_rows(conn, listing_seen, seen)
            copy_rows(conn, listed_memberships, validated.rows)
            copy_rows(conn, listed_organizations, validated.organizations)
            copy_rows(conn, listed_profiles, validated.profile_stubs)
            return validated.quarantined

        quarantined = stage_listing(engine, conn, clerk.iter_membership_pages(), stage_chunk)
        counts = run_in_transaction(
            conn,
            lambda c: _merge_listing(
                c,
                partial(apply.apply_listed_memberships, source=SOURCE),
                Entity.MEMBERSHIP,
                listing_started_at,
            ),
            what="organization_members full sync",
        )
        deleted = reconcile_memberships(
            engine,
            conn,
            clerk,
            listing_started_at=listing_started_at,
            max_fraction=settings.max_delete_fraction,
            log=log,
        )
        fetched = seen_count(conn)
    return SyncReport(
        table="organization_members",
        fetched=fetched,
        inserted=counts.memberships.inserted,
        updated=counts.memberships.updated,
        unchanged=counts.memberships.unchanged,
        deleted=deleted,
        quarantined=quarantined + counts.memberships.quarantined,
        duration_seconds=time.monotonic() - started,
        details={
            "profile_stubs_created": counts.profile_stubs,
            "organizations_from_memberships_written": counts.organizations.inserted
            + counts.organizations.updated,
        },
    )


def _complete_pair(record: Any) -> tuple[str, str] | None:
    """A raw membership's ``(organization id, user id)`` when both are usable ids, else None."""
    organization_id, user_id = membership_pair(record)
    if organization_id is None or user_id is None:
        return None
    return organization_id, user_id


def collect_listing(pages: Iterable[list[Any]]) -> list[Any]:
    """All records of a complete listing, one per id (the newest, when page shifts repeated one)."""
    by_id: dict[str, Any] = {}
    without_id: list[Any] = []
    for page in pages:
        for record in page:
            key = record_id(record)
            if key is None:
                without_id.append(record)
            elif key not in by_id or record_updated_at(record) >= record_updated_at(by_id[key]):
                by_id[key] = record
    return [*by_id.values(), *without_id]


def database_now(engine: Engine) -> datetime:
    """The database's clock, which also stamps ``synced_at``: the listing-start boundary uses it."""
    with engine.connect() as conn:
        return _now(conn)


def check_deletion_share(table: str, candidates: int, live: int, max_fraction: float) -> None:
    """Refuse to delete more than ``max_fraction`` of a table's live rows in one sync."""
    if candidates and candidates > max_fraction * live:
        raise DeletionGuardError(
            f"refusing to delete {candidates} of {live} live rows of {table} "
            f"({candidates / live:.0%}): ORGSYNC_MAX_DELETE_FRACTION allows {max_fraction:.0%}. "
            "An empty or much smaller listing usually means CLERK_SECRET_KEY points at the wrong "
            "Clerk instance. If Clerk really lost these rows, launch one run with max_delete_fraction "
            "raised in its run config (launchpad), or raise ORGSYNC_MAX_DELETE_FRACTION."
        )


def reconcile_soft_deletes(
    engine: Engine,
    conn: Connection,
    spec: SoftDeletedListing,
    clerk: ClerkClient,
    *,
    listing_started_at: datetime,
    max_fraction: float,
    log: Log,
) -> int:
    """Soft-delete live rows absent from a complete listing staged in ``conn`` (an anti-join on the ids
    it held), once Clerk confirms each is gone."""
    table = spec.table
    live = table.c.deleted_at.is_(None)
    unlisted = sa.select(table.c.id).where(
        live,
        _not_written_since(table, listing_started_at),
        ~sa.exists().where(listing_seen.c.id == table.c.id),
    )
    live_rows = sa.select(sa.func.count()).where(live)
    unseen = [row.id for row in _deletion_candidates(conn, table, live_rows, unlisted, max_fraction)]
    exists = run_concurrently(lambda row_id: spec.lookup(clerk, row_id) is not None, unseen)
    confirmed = [row_id for row_id, kept in zip(unseen, exists, strict=True) if not kept]
    _log_kept(log, table.name, len(unseen) - len(confirmed))
    deleted = run_in_transaction(
        engine,
        lambda c: spec.delete(c, confirmed, as_of=_now(c), written_before=listing_started_at),
        what=f"{table.name} deletions",
    )
    if deleted:
        log.info("%s: soft-deleted %d rows that Clerk no longer has", table.name, len(deleted))
    return len(deleted)


def reconcile_memberships(
    engine: Engine,
    conn: Connection,
    clerk: ClerkClient,
    *,
    listing_started_at: datetime,
    max_fraction: float,
    log: Log,
) -> int:
    """Delete memberships absent from a complete listing staged in ``conn`` (an anti-join on the pairs it
    held), once Clerk confirms each is gone."""
    members = organization_members
    unlisted = sa.select(members.c.organization_id, members.c.user_id, members.c.clerk_membership_id).where(
        _not_written_since(members, listing_started_at),
        ~sa.exists().where(
            listing_seen.c.organization_id == members.c.organization_id,
            listing_seen.c.user_id == members.c.user_id,
        ),
    )
    live = sa.select(sa.func.count()).select_from(members)
    unseen = [
        MembershipKey(row.organization_id, row.user_id, row.clerk_membership_id)
        for row in _deletion_candidates(conn, members, live, unlisted, max_fraction)
    ]
    confirmed = _confirm_memberships_gone(clerk, unseen)
    _log_kept(log, members.name, len(unseen) - len(confirmed))
    deleted = run_in_transaction(
        engine,
        lambda c: apply.delete_memberships(c, confirmed, as_of=_now(c), written_before=listing_started_at),
        what="organization_members deletions",
    )
    if deleted:
        log.info("organization_members: deleted %d memberships that Clerk no longer has", deleted)
    return deleted


def _deletion_candidates(
    conn: Connection, table: sa.Table, live: sa.Select[Any], unlisted: sa.Select[Any], max_fraction: float
) -> Sequence[sa.Row[Any]]:
    """The rows a listing did not have, counted against the table's live rows before any is loaded, so a
    listing from the wrong instance is refused without reading the whole table into memory."""
    with conn.begin():
        live_rows = conn.execute(live).scalar_one()
        candidates = conn.execute(sa.select(sa.func.count()).select_from(unlisted.subquery())).scalar_one()
        check_deletion_share(table.name, candidates, live_rows, max_fraction)
        return conn.execute(unlisted).all()


def _log_kept(log: Log, table: str, kept: int) -> None:
    if kept:
        log.info("%s: %d rows missing from the listing still exist in Clerk; kept", table, kept)


def _confirm_memberships_gone(clerk: ClerkClient, keys: Sequence[MembershipKey]) -> list[MembershipKey]:
    """The keys whose membership Clerk no longer has: one lookup of each user's memberships."""
    by_user: dict[str, list[MembershipKey]] = defaultdict(list)
    for key in keys:
        by_user[key.user_id].append(key)
    gone: list[MembershipKey] = []
    lookups = run_concurrently(clerk.list_user_memberships, list(by_user))
    for user_keys, memberships in zip(by_user.values(), lookups, strict=True):
        current_orgs = {m.get("organization", {}).get("id") for m in memberships or ()}
        gone.extend(key for key in user_keys if key.organization_id not in current_orgs)
    return gone


def _not_written_since(table: sa.Table, moment: datetime) -> sa.ColumnElement[bool]:
    return sa.or_(table.c.synced_at.is_(None), table.c.synced_at < moment)


def _now(conn: Connection) -> datetime:
    return conn.execute(sa.select(sa.func.now())).scalar_one()
