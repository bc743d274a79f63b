"""Set-based apply of a batch of webhook events: the created/updated events of each kind are
validated together and merged with one statement per table, through the same write path as the
full sync, instead of one validation and a dozen statements per event.

Order inside a batch does not matter: every write compares Clerk's timestamps (newer wins, a
deletion is final for older data), so merging a batch's upserts at once lands what applying them
one by one would. Of several events for one record in a batch, only the newest payload is merged;
the older ones are superseded and count as applied. Deletions, events of other types and events
without a usable id are left to the per-event path; so is a whole batch whose merge fails or
quarantines a membership for a missing organization, so that each event's failure stays its own.
"""

from collections import Counter
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from orgsync_pipeline.event_types import EventAction, EventFamily, split_event_type
from orgsync_pipeline.rows import Entity, QuarantinedRecord
from orgsync_pipeline.store import apply
from orgsync_pipeline.store.inbox import InboxEvent
from orgsync_pipeline.validation import (
    RowT,
    Validated,
    ValidatedMemberships,
    membership_pair,
    record_id,
    record_updated_at,
    validate_memberships,
    validate_organizations,
    validate_profiles,
)

SOURCE = "webhook"
UPSERTS = (EventAction.CREATED, EventAction.UPDATED)


class MergeNeedsOneByOne(Exception):
    """The batch's merge met a case only the per-event path reports exactly (rolled back)."""


@dataclass
class BatchResult:
    """Per event id: None when applied, else why it was quarantined; and the rows written per table."""

    quarantined: dict[int, str | None] = field(default_factory=dict)
    extra_quarantined: int = 0
    written: Counter[str] = field(default_factory=Counter)


def apply_upserts_together(
    conn: sa.Connection, events: Sequence[InboxEvent], role_map: Mapping[str, str]
) -> BatchResult:
    """Merge the batch's created/updated events, one statement per table; return the outcome of
    each event it took (the others are not in the result)."""
    result = BatchResult()
    for family, newest in _newest_per_record(events).items():
        if family is EventFamily.ORGANIZATION:
            _merge_organizations(conn, newest, result)
        elif family is EventFamily.USER:
            _merge_profiles(conn, newest, result)
        else:
            _merge_memberships(conn, newest, role_map, result)
    return result


Grouped = dict[Hashable, list[InboxEvent]]


def _newest_per_record(events: Sequence[InboxEvent]) -> dict[EventFamily, Grouped]:
    """Upsert events by family and record key, newest payload last (Clerk's updated_at, then order)."""
    grouped: dict[EventFamily, Grouped] = {}
    for event in events:
        key = _upsert_key(event)
        if key is not None:
            family, record_key = key
            grouped.setdefault(family, {}).setdefault(record_key, []).append(event)
    for by_key in grouped.values():
        for same in by_key.values():
            same.sort(key=lambda event: record_updated_at(event.payload["data"]))  # stable: order breaks ties
    return grouped


def _upsert_key(event: InboxEvent) -> tuple[EventFamily, Hashable] | None:
    try:
        family, action = split_event_type(event.event_type)
    except ValueError:
        return None
    data = event.payload.get("data")
    if action not in UPSERTS or not isinstance(data, dict):
        return None
    key: Hashable = membership_pair(data) if family is EventFamily.MEMBERSHIP else record_id(data)
    if key is None or key == (None, None) or (isinstance(key, tuple) and None in key):
        return None
    return family, key


def _merge_organizations(conn: sa.Connection, newest: Grouped, result: BatchResult) -> None:
    _merge_entities(conn, newest, result, validate_organizations, apply.apply_organizations, "organizations")


def _merge_profiles(conn: sa.Connection, newest: Grouped, result: BatchResult) -> None:
    _merge_entities(conn, newest, result, validate_profiles, apply.apply_profiles, "profiles")


def _merge_entities(
    conn: sa.Connection,
    newest: Grouped,
    result: BatchResult,
    validate: Callable[[list[Any]], Validated[RowT]],
    write: Callable[[sa.Connection, Sequence[RowT]], apply.ApplyCounts],
    table: str,
) -> None:
    validated = validate([same[-1].payload["data"] for same in newest.values()])
    counts = write(conn, validated.rows)
    apply.quarantine(conn, validated.quarantined, source=SOURCE)
    result.written[table] += counts.inserted + counts.updated
    _record_outcomes(newest, validated.quarantined, record_id, result)


def _merge_memberships(
    conn: sa.Connection, newest: Grouped, role_map: Mapping[str, str], result: BatchResult
) -> None:
    validated = validate_memberships([same[-1].payload["data"] for same in newest.values()], role_map)
    counts = write_memberships(conn, validated)
    if counts.memberships.quarantined:
        raise MergeNeedsOneByOne("a membership's organization does not exist")
    apply.quarantine(conn, validated.quarantined, source=SOURCE)
    result.written.update(membership_writes(counts))
    memberships = [record for record in validated.quarantined if record.entity is Entity.MEMBERSHIP]
    result.extra_quarantined += len(validated.quarantined) - len(memberships)
    _record_outcomes(newest, memberships, membership_pair, result)


def write_memberships(conn: sa.Connection, validated: ValidatedMemberships) -> apply.MembershipApplyCounts:
    """Write the memberships of webhook events (validated), after the organizations they embed and with
    stubs of their users; quarantining what failed validation is the caller's."""
    return apply.apply_memberships(
        conn,
        validated.rows,
        organizations_first=validated.organizations,
        profile_stubs=validated.profile_stubs,
        source=SOURCE,
    )


def membership_writes(counts: apply.MembershipApplyCounts) -> dict[str, int]:
    """The rows :func:`write_memberships` wrote, per table."""
    return {
        "organizations": counts.organizations.inserted + counts.organizations.updated,
        "profiles": counts.profile_stubs,
        "organization_members": counts.memberships.inserted + counts.memberships.updated,
    }


def _record_outcomes(
    newest: Grouped,
    quarantined: Sequence[QuarantinedRecord],
    key_of: Callable[[Any], Hashable],
    result: BatchResult,
) -> None:
    reasons = {key_of(record.payload): record.reason for record in quarantined}
    for key, same in newest.items():
        *superseded, last = same
        for event in superseded:
            result.quarantined[event.id] = None
        result.quarantined[last.id] = reasons.get(key)
