"""Clerk webhook events applied through the same validation and apply layer as the full sync.

Events arrive at least once and in no guaranteed order. Applying them is safe in any order because
the apply layer is: newer wins on Clerk's ``updated_at``, and a deletion (dated by the event's own
timestamp) stands against anything not newer than it.
"""

import dataclasses
import logging
import statistics
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from orgsync_pipeline.event_batches import (
    SOURCE,
    apply_upserts_together,
    membership_writes,
    write_memberships,
)
from orgsync_pipeline.event_types import HANDLED_EVENTS, EventAction, EventFamily, split_event_type
from orgsync_pipeline.rows import MembershipKey, QuarantinedRecord
from orgsync_pipeline.settings import Settings
from orgsync_pipeline.store import apply, inbox, write_log
from orgsync_pipeline.store.inbox import HandledStatus, InboxStatus
from orgsync_pipeline.store.locking import drain_lock_key
from orgsync_pipeline.store.retry import is_transient
from orgsync_pipeline.validation import (
    MEMBERSHIP_ID,
    ORG_ID,
    USER_ID,
    RowT,
    Validated,
    membership_pair,
    record_updated_at,
    validate_memberships,
    validate_organizations,
    validate_profiles,
)

MAX_BATCHES_PER_RUN = 100

Log = logging.Logger | logging.LoggerAdapter[Any]


class EventShapeError(ValueError):
    """The event's payload is not the shape its type promises."""


@dataclass(frozen=True)
class EventOutcome:
    status: HandledStatus
    note: str | None = None
    quarantined: int = 0
    # Rows written per table (for the write log the sensor reports to Dagster).
    written: Mapping[str, int] = field(default_factory=dict)


@dataclass
class ApplyRunReport:
    """What one drain of the inbox did; becomes the apply run's materialization metadata."""

    statuses: Counter[InboxStatus] = field(default_factory=Counter)
    quarantined: int = 0
    written: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    lags: list[float] = field(default_factory=list)
    duration_seconds: float = 0.0
    skipped_reason: str | None = None

    def metadata(self) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "events_applied": self.statuses[InboxStatus.APPLIED],
            "events_ignored": self.statuses[InboxStatus.IGNORED],
            "events_failed": self.statuses[InboxStatus.FAILED],
            "events_dead": self.statuses[InboxStatus.DEAD],
            "events_quarantined": self.statuses[InboxStatus.QUARANTINED],
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
        return EventOutcome(InboxStatus.IGNORED, f"orgsync does not handle {event_type} events")
    data = payload.get("data")
    if not isinstance(data, dict):
        raise EventShapeError(f"{event_type}: data is not a JSON object")
    family, action = split_event_type(event_type)
    if action is EventAction.DELETED:
        return _apply_deletion(conn, family, data, occurred_at)
    if family is EventFamily.ORGANIZATION:
        return _apply_record(conn, validate_organizations([data]), apply.apply_organizations, "organizations")
    if family is EventFamily.USER:
        return _apply_record(conn, validate_profiles([data]), apply.apply_profiles, "profiles")

    memberships = validate_memberships([data], role_map)
    membership_counts = write_memberships(conn, memberships)
    apply.quarantine(conn, memberships.quarantined, source=SOURCE)
    written = membership_writes(membership_counts)
    if not memberships.rows:
        return _quarantined(memberships.quarantined)
    if membership_counts.memberships.quarantined:
        return EventOutcome(
            InboxStatus.IGNORED, "quarantined: the membership's organization does not exist", 1, written
        )
    # The membership landed; its embedded organization may still have been quarantined.
    return EventOutcome(InboxStatus.APPLIED, None, len(memberships.quarantined), written)


def _apply_record(
    conn: sa.Connection,
    validated: Validated[RowT],
    write: Callable[[sa.Connection, Sequence[RowT]], apply.ApplyCounts],
    table: str,
) -> EventOutcome:
    """Write an organization's or a user's event (validated) to ``table``, or quarantine it."""
    counts = write(conn, validated.rows)
    apply.quarantine(conn, validated.quarantined, source=SOURCE)
    if not validated.rows:
        return _quarantined(validated.quarantined)
    return EventOutcome(InboxStatus.APPLIED, written={table: counts.inserted + counts.updated})


def _apply_deletion(
    conn: sa.Connection, family: EventFamily, data: Mapping[str, Any], occurred_at: datetime
) -> EventOutcome:
    if family is EventFamily.ORGANIZATION:
        ids = apply.delete_organizations(
            conn, [_deleted_id(data, ORG_ID)], as_of=occurred_at, record_unseen=True
        )
        return EventOutcome(InboxStatus.APPLIED, written={"organizations": len(ids)})
    if family is EventFamily.USER:
        ids = apply.delete_profiles(conn, [_deleted_id(data, USER_ID)], as_of=occurred_at, record_unseen=True)
        return EventOutcome(InboxStatus.APPLIED, written={"profiles": len(ids)})
    if family is EventFamily.MEMBERSHIP:
        # The payload is the whole membership as it was; the deletion is at least as new as it.
        as_of = max(occurred_at, _ms_to_datetime(record_updated_at(data)))
        deleted = apply.delete_memberships(conn, [_membership_key(data)], as_of=as_of)
        return EventOutcome(InboxStatus.APPLIED, written={"organization_members": deleted})
    raise EventShapeError(f"{family}.deleted: orgsync has no such table")


def apply_pending_events(
    engine: Engine,
    settings: Settings,
    log: Log,
    *,
    write_path: str | None = None,
    batch_size: int | None = None,
    max_batches: int = MAX_BATCHES_PER_RUN,
    should_stop: Callable[[], bool] = lambda: False,
) -> ApplyRunReport:
    """Drain the inbox: claim batches of pending events in Clerk's order and apply each.

    Each batch is one transaction and each event a savepoint in it: an event that fails is rolled
    back alone. A transient failure (lost connection, deadlock, lock or statement timeout) is retried
    with backoff and is dead after ``ORGSYNC_WEBHOOK_MAX_ATTEMPTS``; an event that can never apply is
    quarantined at once; the others still land. A lost database connection raises and leaves the
    batch pending. Drains take turns (an advisory lock), so events apply in Clerk's order across
    every receiver and run; a drain that finds the lock taken returns at once with
    ``skipped_reason`` set. ``write_path`` (inline apply) logs each batch's writes for the sensor.
    """
    started = time.monotonic()
    report = ApplyRunReport()
    with engine.connect() as lock_conn:
        if not lock_conn.execute(sa.select(sa.func.pg_try_advisory_lock(*drain_lock_key()))).scalar_one():
            lock_conn.rollback()
            report.skipped_reason = "another apply holds the inbox"
            log.debug("Another apply is draining the inbox; nothing to do here.")
            return report
        lock_conn.commit()
        try:
            size = batch_size or settings.webhook_batch_size
            while report.batches < max_batches and not should_stop():
                if not _apply_batch(engine, settings, report, log, size=size, write_path=write_path):
                    break
        finally:
            lock_conn.execute(sa.select(sa.func.pg_advisory_unlock(*drain_lock_key())))
            lock_conn.commit()
    report.duration_seconds = time.monotonic() - started
    return report


def _apply_batch(
    engine: Engine, settings: Settings, report: ApplyRunReport, log: Log, *, size: int, write_path: str | None
) -> bool:
    written: Counter[str] = Counter()
    lags: list[float] = []
    with engine.begin() as conn:
        events = inbox.claim_batch(conn, size)
        if not events:
            return False
        report.batches += 1
        together = _apply_together(conn, events, settings, log)
        handled: list[tuple[inbox.InboxEvent, EventOutcome]] = []
        for event in events:
            outcome = together.get(event.id) or _apply_one(conn, event, settings, report, log)
            if outcome is not None:
                handled.append((event, outcome))
        handled_at = inbox.mark_handled_many(
            conn, [(event.id, outcome.status, outcome.note) for event, outcome in handled]
        )
        for event, outcome in handled:
            report.statuses[outcome.status] += 1
            report.quarantined += outcome.quarantined
            written.update(outcome.written)
            if handled_at is not None:
                lags.append((handled_at - event.received_at).total_seconds())
        if write_path is not None:
            lag = max(lags, default=None)
            for table, rows in sorted(written.items()):
                write_log.record_write(conn, path=write_path, table=table, rows=rows, lag_seconds=lag)
    report.written.update(written)
    report.lags.extend(lags)
    log.info("applied a batch of %d webhook events", len(events))
    return True


def _apply_together(
    conn: sa.Connection, events: Sequence[inbox.InboxEvent], settings: Settings, log: Log
) -> dict[int, EventOutcome]:
    """The outcomes of the batch's created/updated events, merged set-based in a savepoint; empty
    when that merge fails, so that the per-event path applies (and isolates) each event instead."""
    try:
        with conn.begin_nested():
            result = apply_upserts_together(conn, events, settings.role_map)
    except Exception as exc:  # rolled back; each event is then applied, and fails, on its own
        log.info("batch merge fell back to one event at a time (%s)", type(exc).__name__)
        return {}
    outcomes = {
        event_id: EventOutcome(InboxStatus.APPLIED)
        if reason is None
        else EventOutcome(InboxStatus.IGNORED, f"quarantined: {reason}", 1)
        for event_id, reason in result.quarantined.items()
    }
    if outcomes:  # the batch's totals ride on one outcome, so the report and write log add up
        first = next(iter(outcomes))
        outcomes[first] = dataclasses.replace(
            outcomes[first],
            written=result.written,
            quarantined=outcomes[first].quarantined + result.extra_quarantined,
        )
    return outcomes


def _apply_one(
    conn: sa.Connection, event: inbox.InboxEvent, settings: Settings, report: ApplyRunReport, log: Log
) -> EventOutcome | None:
    """Apply one claimed event in a savepoint; on failure record it (retry or quarantine) and
    return None."""
    try:
        with conn.begin_nested():
            return apply_event(
                conn,
                event.event_type,
                event.payload,
                occurred_at=event.event_timestamp or event.received_at,
                role_map=settings.role_map,
            )
    except Exception as exc:  # recorded on the event: retried later, or quarantined for good
        # The driver's message, not SQLAlchemy's, which appends the statement and its parameters.
        detail = exc.orig if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None else exc
        error = f"{type(detail).__name__}: {detail}"[:2000]
        if is_transient(exc):
            status = inbox.mark_failed(conn, event, error, max_attempts=settings.webhook_max_attempts)
        else:
            inbox.mark_quarantined(conn, event, f"cannot apply: {error}")
            status = InboxStatus.QUARANTINED
        log.warning("webhook event %s (%s) %s: %s", event.id, event.event_type, status, error)
        report.statuses[status] += 1
        return None


def _quarantined(records: list[QuarantinedRecord]) -> EventOutcome:
    return EventOutcome(InboxStatus.IGNORED, f"quarantined: {records[0].reason}", len(records))


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
    if membership_id is not None and not (
        isinstance(membership_id, str) and MEMBERSHIP_ID.fullmatch(membership_id)
    ):
        raise EventShapeError(f"membership has no usable id (got {membership_id!r})")
    return MembershipKey(org_id, user_id, membership_id)


def _ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(max(ms, 0) / 1000, UTC)
