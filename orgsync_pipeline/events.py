"""Clerk webhook events applied through the same validation and apply layer as the full sync.

Events arrive at least once and in no guaranteed order. Applying them is safe in any order because
the apply layer is: newer wins on Clerk's ``updated_at``, and a deletion (dated by the event's own
timestamp) stands against anything not newer than it.
"""

import logging
import statistics
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from orgsync_pipeline.rows import MembershipKey, QuarantinedRecord
from orgsync_pipeline.settings import Settings
from orgsync_pipeline.store import apply, inbox
from orgsync_pipeline.validation import (
    ORG_ID,
    USER_ID,
    membership_pair,
    record_updated_at,
    validate_memberships,
    validate_organizations,
    validate_profiles,
)

SOURCE = "webhook"
HANDLED_EVENTS = frozenset(
    f"{family}.{action}"
    for family in ("organization", "user", "organizationMembership")
    for action in ("created", "updated", "deleted")
)
# Any constant works; it keeps two apply runs from draining the inbox at the same time.
APPLY_LOCK_KEY = 0x6F726773796E6301
MAX_BATCHES_PER_RUN = 100

Log = logging.Logger | logging.LoggerAdapter


class EventShapeError(ValueError):
    """The event's payload is not the shape its type promises."""


@dataclass(frozen=True)
class EventOutcome:
    status: str  # applied | ignored
    note: str | None = None
    quarantined: int = 0


@dataclass
class ApplyRunReport:
    """What one drain of the inbox did; becomes the apply run's materialization metadata."""

    statuses: Counter[str] = field(default_factory=Counter)
    quarantined: int = 0
    batches: int = 0
    lags: list[float] = field(default_factory=list)
    duration_seconds: float = 0.0
    skipped_reason: str | None = None

    def metadata(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "events_applied": self.statuses["applied"],
            "events_ignored": self.statuses["ignored"],
            "events_failed": self.statuses["failed"],
            "events_dead": self.statuses["dead"],
            "records_quarantined": self.quarantined,
            "batches": self.batches,
            "duration_seconds": round(self.duration_seconds, 3),
        }
        if self.lags:
            lags = sorted(self.lags)
            metadata["lag_seconds_p50"] = round(statistics.median(lags), 3)
            metadata["lag_seconds_p95"] = round(lags[max(0, round(0.95 * len(lags)) - 1)], 3)
            metadata["lag_seconds_max"] = round(lags[-1], 3)
        if self.skipped_reason:
            metadata["skipped"] = self.skipped_reason
        return metadata


def apply_event(
    conn: sa.Connection,
    event_type: str,
    payload: Mapping[str, Any],
    *,
    occurred_at: datetime,
    role_map: Mapping[str, str],
) -> EventOutcome:
    """Apply one Clerk event. Raises :class:`EventShapeError` when its payload is not usable."""
    if event_type not in HANDLED_EVENTS:
        return EventOutcome("ignored", f"orgsync does not handle {event_type} events")
    data = payload.get("data")
    if not isinstance(data, dict):
        raise EventShapeError(f"{event_type}: data is not a JSON object")
    family, action = event_type.rsplit(".", 1)

    if family == "organization" and action == "deleted":
        apply.delete_organizations(conn, [_deleted_id(data, ORG_ID)], as_of=occurred_at, record_unseen=True)
        return EventOutcome("applied")
    if family == "user" and action == "deleted":
        apply.delete_profiles(conn, [_deleted_id(data, USER_ID)], as_of=occurred_at, record_unseen=True)
        return EventOutcome("applied")
    if family == "organizationMembership" and action == "deleted":
        # The payload is the whole membership as it was; the deletion is at least as new as it.
        as_of = max(occurred_at, _ms_to_datetime(record_updated_at(data)))
        apply.delete_memberships(conn, [_membership_key(data)], as_of=as_of)
        return EventOutcome("applied")

    if family == "organization":
        organizations = validate_organizations([data])
        apply.apply_organizations(conn, organizations.rows)
        apply.quarantine(conn, organizations.quarantined, source=SOURCE)
        return _quarantined(organizations.quarantined) if not organizations.rows else EventOutcome("applied")
    if family == "user":
        profiles = validate_profiles([data])
        apply.apply_profiles(conn, profiles.rows)
        apply.quarantine(conn, profiles.quarantined, source=SOURCE)
        return _quarantined(profiles.quarantined) if not profiles.rows else EventOutcome("applied")

    memberships = validate_memberships([data], role_map)
    counts = apply.apply_memberships(
        conn,
        memberships.rows,
        organizations_first=memberships.organizations,
        profile_stubs=memberships.profile_stubs,
        source=SOURCE,
    )
    apply.quarantine(conn, memberships.quarantined, source=SOURCE)
    if not memberships.rows:
        return _quarantined(memberships.quarantined)
    if counts.memberships.quarantined:
        return EventOutcome("ignored", "quarantined: the membership's organization does not exist", 1)
    # The membership landed; its embedded organization may still have been quarantined.
    return EventOutcome("applied", None, len(memberships.quarantined))


def apply_pending_events(engine: Engine, settings: Settings, log: Log) -> ApplyRunReport:
    """Drain the inbox: claim batches of pending events in Clerk's order and apply each.

    Each batch is one transaction and each event a savepoint in it: an event that fails is rolled
    back alone and recorded with its error (dead after ``ORGSYNC_WEBHOOK_MAX_ATTEMPTS``), and the
    others still land. A lost database connection fails the run and leaves the batch pending.
    """
    started = time.monotonic()
    report = ApplyRunReport()
    with engine.connect() as lock_conn:
        if not lock_conn.execute(sa.select(sa.func.pg_try_advisory_lock(APPLY_LOCK_KEY))).scalar_one():
            report.skipped_reason = "another apply run holds the inbox"
            log.info("Another clerk_webhook_apply run is draining the inbox; nothing to do here.")
            return report
        try:
            while report.batches < MAX_BATCHES_PER_RUN and _apply_batch(engine, settings, report, log):
                pass
        finally:
            lock_conn.execute(sa.select(sa.func.pg_advisory_unlock(APPLY_LOCK_KEY)))
            lock_conn.commit()
    report.duration_seconds = time.monotonic() - started
    return report


def _apply_batch(engine: Engine, settings: Settings, report: ApplyRunReport, log: Log) -> bool:
    with engine.begin() as conn:
        events = inbox.claim_batch(conn, settings.webhook_batch_size)
        if not events:
            return False
        report.batches += 1
        for event in events:
            try:
                with conn.begin_nested():
                    outcome = apply_event(
                        conn,
                        event.event_type,
                        event.payload,
                        occurred_at=event.event_timestamp or event.received_at,
                        role_map=settings.role_map,
                    )
            except Exception as exc:  # recorded on the event, which is retried later
                error = f"{type(exc).__name__}: {exc}"[:2000]
                status = inbox.mark_failed(conn, event, error, max_attempts=settings.webhook_max_attempts)
                log.warning("webhook event %s (%s) %s: %s", event.id, event.event_type, status, error)
                report.statuses[status] += 1
                continue
            handled_at = inbox.mark_handled(conn, event.id, outcome.status, outcome.note)
            report.statuses[outcome.status] += 1
            report.quarantined += outcome.quarantined
            report.lags.append((handled_at - event.received_at).total_seconds())
    log.info("applied a batch of %d webhook events", len(events))
    return True


def _quarantined(records: list[QuarantinedRecord]) -> EventOutcome:
    return EventOutcome("ignored", f"quarantined: {records[0].reason}", len(records))


def _deleted_id(data: Mapping[str, Any], pattern: Any) -> str:
    value = data.get("id")
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise EventShapeError(f"deleted object has no usable id (got {value!r})")
    return value


def _membership_key(data: Mapping[str, Any]) -> MembershipKey:
    org_id, user_id = membership_pair(data)
    if not (isinstance(org_id, str) and ORG_ID.fullmatch(org_id)):
        raise EventShapeError(f"membership has no usable organization.id (got {org_id!r})")
    if not (isinstance(user_id, str) and USER_ID.fullmatch(user_id)):
        raise EventShapeError(f"membership has no usable public_user_data.user_id (got {user_id!r})")
    membership_id = data.get("id")
    return MembershipKey(org_id, user_id, membership_id if isinstance(membership_id, str) else None)


def _ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(max(ms, 0) / 1000, UTC)
