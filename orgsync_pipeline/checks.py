"""Asset checks: quarantined records, and row counts against Clerk's own counts."""

from collections.abc import Callable, Sequence
from typing import Any

import dagster as dg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from orgsync_pipeline.clerk.client import ClerkClient
from orgsync_pipeline.resources import ClerkResource, PostgresResource
from orgsync_pipeline.rows import Entity
from orgsync_pipeline.store.inbox import InboxStatus
from orgsync_pipeline.store.schema import (
    organization_members,
    organizations,
    profiles,
    sync_quarantine,
    webhook_inbox,
)

SAMPLE_SIZE = 10


def _markdown(header: list[str], rows: Sequence[Sequence[object]]) -> dg.MetadataValue:
    """A small Markdown table for the UI (or "none")."""
    if not rows:
        return dg.MetadataValue.md("none")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(value).replace("|", "\\|") for value in row) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))


def quarantine_check(asset: str, entity: Entity) -> dg.AssetChecksDefinition:
    """Passes when no `entity` record waits in `sync_quarantine`; shows a sample of reasons."""

    @dg.asset_check(
        asset=asset, name="no_quarantined_records", description=f"No {entity} records in sync_quarantine."
    )
    def check(postgres: PostgresResource) -> dg.AssetCheckResult:
        with postgres.engine().connect() as conn:
            count = conn.execute(
                sa.select(sa.func.count()).where(sync_quarantine.c.entity == entity)
            ).scalar_one()
            sample = conn.execute(
                sa.select(sync_quarantine.c.clerk_id, sync_quarantine.c.reason)
                .where(sync_quarantine.c.entity == entity)
                .order_by(sync_quarantine.c.last_seen_at.desc())
                .limit(SAMPLE_SIZE)
            ).all()
        return dg.AssetCheckResult(
            passed=count == 0,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"quarantined": count, "sample": _markdown(["clerk id", "reason"], sample)},
        )

    return check


def parity_check(
    asset: str, table: sa.Table, clerk_count: Callable[[ClerkClient], int]
) -> dg.AssetChecksDefinition:
    """Passes when the table's live rows equal Clerk's own count of the entity."""

    @dg.asset_check(
        asset=asset, name="count_matches_clerk", description=f"Live rows in {table.name} equal Clerk's count."
    )
    def check(clerk: ClerkResource, postgres: PostgresResource) -> dg.AssetCheckResult:
        live = sa.select(sa.func.count()).select_from(table)
        if "deleted_at" in table.c:
            live = live.where(table.c.deleted_at.is_(None))
        with postgres.engine().connect() as conn:
            in_postgres = conn.execute(live).scalar_one()
        with clerk.client() as client:
            in_clerk = clerk_count(client)
        return dg.AssetCheckResult(
            passed=in_postgres == in_clerk,
            severity=dg.AssetCheckSeverity.WARN,
            metadata={"clerk": in_clerk, "postgres": in_postgres, "difference": in_postgres - in_clerk},
        )

    return check


full_sync_checks = [
    quarantine_check("organizations", Entity.ORGANIZATION),
    quarantine_check("profiles", Entity.PROFILE),
    quarantine_check("organization_members", Entity.MEMBERSHIP),
    parity_check("organizations", organizations, ClerkClient.count_organizations),
    parity_check("profiles", profiles, ClerkClient.count_users),
    parity_check("organization_members", organization_members, ClerkClient.count_memberships),
]


@dg.asset_check(asset="webhook_inbox", name="no_dead_events", description="No webhook event has given up.")
def no_dead_events(postgres: PostgresResource) -> dg.AssetCheckResult:
    """Fails while an event is `dead` (failed `ORGSYNC_WEBHOOK_MAX_ATTEMPTS` times); fix the cause, then
    `orgsync requeue-dead-events`. The next full sync repairs the data meanwhile."""
    passed, metadata = dead_events(postgres.engine())
    return dg.AssetCheckResult(passed=passed, severity=dg.AssetCheckSeverity.ERROR, metadata=metadata)


def dead_events_evaluation(engine: Engine) -> dg.AssetCheckEvaluation:
    """The ``no_dead_events`` check's evaluation, for a run that drains the inbox to record."""
    passed, metadata = dead_events(engine)
    return dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey("webhook_inbox"),
        check_name="no_dead_events",
        passed=passed,
        metadata=metadata,
        severity=dg.AssetCheckSeverity.ERROR,
    )


def dead_events(engine: Engine) -> tuple[bool, dict[str, Any]]:
    """Whether no webhook event is dead, with their count and a sample (newest first)."""
    dead = sa.select(webhook_inbox.c.id, webhook_inbox.c.event_type, webhook_inbox.c.last_error).where(
        webhook_inbox.c.status == InboxStatus.DEAD
    )
    with engine.connect() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(dead.subquery())).scalar_one()
        sample = conn.execute(dead.order_by(webhook_inbox.c.id.desc()).limit(SAMPLE_SIZE)).all()
    return count == 0, {"dead_events": count, "sample": _markdown(["id", "type", "last error"], sample)}


webhook_checks = [no_dead_events]
