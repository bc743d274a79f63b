"""On-demand sync of one user or one organization, for a signed-in user's request (``POST /sync/…``).

A small full sync: the target and every page of its memberships are read from Clerk, validated,
quarantined or applied through the one write path (newer wins, tombstones hold), and then the
target's memberships that Clerk no longer lists are deleted. Deletions follow the full sync's rules:
only from a listing that completed (a failed page raises before anything is written), only rows not
written since the listing began (database clock, read before the first request), and only once a
lookup of the user's memberships confirms each is gone. A 404 for the target soft-deletes it.

Every write is logged in ``write_log`` (path ``on_demand``) in its own transaction, for the sensor to
report as asset materializations.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from orgsync_pipeline.clerk.client import ClerkClient, ClerkRequestError
from orgsync_pipeline.rows import MembershipKey, OrganizationRow, ProfileRow, QuarantinedRecord
from orgsync_pipeline.settings import Settings
from orgsync_pipeline.store import apply
from orgsync_pipeline.store.schema import organization_members
from orgsync_pipeline.store.write_log import record_write
from orgsync_pipeline.sync import (
    _confirm_memberships_gone,
    _not_written_since,
    collect_listing,
    database_now,
)
from orgsync_pipeline.validation import (
    ValidatedMemberships,
    membership_pair,
    validate_memberships,
    validate_organizations,
    validate_profiles,
)

SOURCE = "on_demand"


@dataclass
class OnDemandReport:
    """What one on-demand sync did; the API answers with :meth:`counts`."""

    target: str  # "user" | "organization"
    target_id: str
    found: bool = True
    memberships_fetched: int = 0
    organizations: apply.ApplyCounts = field(default_factory=apply.ApplyCounts)
    profiles: apply.ApplyCounts = field(default_factory=apply.ApplyCounts)
    memberships: apply.ApplyCounts = field(default_factory=apply.ApplyCounts)
    profile_stubs: int = 0
    memberships_deleted: int = 0
    soft_deleted: int = 0
    quarantined: int = 0

    def counts(self) -> dict[str, Any]:
        """The counts as JSON: per table inserted/updated/unchanged, and what was deleted or quarantined."""

        def table(counts: apply.ApplyCounts, **extra: int) -> dict[str, int]:
            return {
                "inserted": counts.inserted,
                "updated": counts.updated,
                "unchanged": counts.unchanged,
                **extra,
            }

        return {
            "organizations": table(self.organizations),
            "profiles": table(self.profiles, stubs_created=self.profile_stubs),
            "organization_members": table(
                self.memberships, fetched=self.memberships_fetched, deleted=self.memberships_deleted
            ),
            "quarantined": self.quarantined,
            "soft_deleted": self.soft_deleted,
        }


def sync_user(engine: Engine, clerk: ClerkClient, user_id: str, settings: Settings) -> OnDemandReport:
    """Refresh one user's profile and all of their memberships, with those organizations."""
    report = OnDemandReport("user", user_id)
    listing_started_at = database_now(engine)  # before the first request to Clerk
    user = clerk.get_user(user_id)
    listing = clerk.list_user_memberships(user_id) if user is not None else None
    if user is None or listing is None:
        _soft_delete_target(engine, report, apply.delete_profiles, "profiles", listing_started_at)
        return report
    records = collect_listing([listing])
    profile = validate_profiles([user])
    memberships = validate_memberships(records, settings.role_map)
    _apply(engine, report, memberships, profiles=profile.rows, quarantined=profile.quarantined)
    _delete_unlisted_memberships(engine, clerk, report, records, listing_started_at)
    return report


def sync_organization(engine: Engine, clerk: ClerkClient, org_id: str, settings: Settings) -> OnDemandReport:
    """Refresh one organization and all of its memberships (every page)."""
    report = OnDemandReport("organization", org_id)
    listing_started_at = database_now(engine)
    organization = clerk.get_organization(org_id)
    records: list[Any] = []
    if organization is not None:
        try:
            records = collect_listing(clerk.iter_organization_membership_pages(org_id))
        except ClerkRequestError as exc:
            if exc.status != 404:
                raise
            organization = None  # deleted while its memberships were being listed
    if organization is None:
        _soft_delete_target(engine, report, apply.delete_organizations, "organizations", listing_started_at)
        return report
    org = validate_organizations([organization])
    memberships = validate_memberships(records, settings.role_map)
    _apply(engine, report, memberships, organizations=org.rows, quarantined=org.quarantined)
    _delete_unlisted_memberships(engine, clerk, report, records, listing_started_at)
    return report


def _apply(
    engine: Engine,
    report: OnDemandReport,
    memberships: ValidatedMemberships,
    *,
    organizations: Sequence[OrganizationRow] = (),
    profiles: Sequence[ProfileRow] = (),
    quarantined: Sequence[QuarantinedRecord],
) -> None:
    """One transaction, parents first (organizations, profiles, then memberships), like every writer.

    ``organizations``, ``profiles`` and ``quarantined`` are the target's, as fetched and validated. Its
    organization goes after the ones its memberships embed (on equal updated_at the last row of a batch
    wins); its quarantined records go before the memberships' own."""
    with engine.begin() as conn:
        report.organizations = apply.apply_organizations(conn, [*memberships.organizations, *organizations])
        report.profiles = apply.apply_profiles(conn, profiles)
        counts = apply.apply_memberships(
            conn, memberships.rows, profile_stubs=memberships.profile_stubs, source=SOURCE
        )
        report.memberships = counts.memberships
        report.profile_stubs = counts.profile_stubs
        report.quarantined = (
            apply.quarantine(conn, [*quarantined, *memberships.quarantined], source=SOURCE)
            + counts.memberships.quarantined
        )
        _log(conn, "organizations", report.organizations.inserted + report.organizations.updated)
        _log(conn, "profiles", report.profiles.inserted + report.profiles.updated + counts.profile_stubs)
        _log(conn, "organization_members", counts.memberships.inserted + counts.memberships.updated)


def _delete_unlisted_memberships(
    engine: Engine,
    clerk: ClerkClient,
    report: OnDemandReport,
    records: Sequence[Any],
    listing_started_at: datetime,
) -> None:
    """Delete the target's memberships absent from its complete listing (``records``), not written since
    the listing began, once Clerk confirms each is gone (the full sync's rule; offset pages can shift under
    a crawl). Counts the memberships fetched and deleted in ``report``."""
    report.memberships_fetched = len(records)
    seen = {pair for pair in map(membership_pair, records) if None not in pair}
    members = organization_members
    with engine.connect() as conn:
        unseen = [
            MembershipKey(*row)
            for row in conn.execute(
                sa.select(members.c.organization_id, members.c.user_id, members.c.clerk_membership_id)
                .where(_members_of(report), _not_written_since(members, listing_started_at))
                .order_by(members.c.organization_id, members.c.user_id)
            ).all()
            if (row.organization_id, row.user_id) not in seen
        ]
    confirmed = _confirm_memberships_gone(clerk, unseen) if unseen else []
    if not confirmed:
        report.memberships_deleted = 0
        return
    with engine.begin() as conn:
        report.memberships_deleted = apply.delete_memberships(
            conn, confirmed, as_of=_now(conn), written_before=listing_started_at
        )
        _log(conn, "organization_members", report.memberships_deleted)


def _soft_delete_target(
    engine: Engine,
    report: OnDemandReport,
    delete: Callable[..., list[str]],
    table: str,
    listing_started_at: datetime,
) -> None:
    """Clerk answered 404 for the target: soft-delete it (and so its memberships), unless written since
    the listing began."""
    report.found = False
    with engine.begin() as conn:
        members = conn.execute(
            sa.select(sa.func.count()).select_from(organization_members).where(_members_of(report))
        ).scalar_one()
        deleted = delete(conn, [report.target_id], as_of=_now(conn), written_before=listing_started_at)
        report.soft_deleted = len(deleted)
        if deleted:
            report.memberships_deleted = members
            _log(conn, table, len(deleted))
            _log(conn, "organization_members", members)


def _members_of(report: OnDemandReport) -> sa.ColumnElement[bool]:
    """The target's rows of ``organization_members``."""
    members = organization_members.c
    column = members.user_id if report.target == "user" else members.organization_id
    return column == report.target_id


def _log(conn: Connection, table: str, rows: int) -> None:
    record_write(conn, path="on_demand", table=table, rows=rows)


def _now(conn: Connection) -> datetime:
    return conn.execute(sa.select(sa.func.now())).scalar_one()
