"""``orgsync status``: what the synced tables, the webhook inbox and the quarantine look like now.

Read-only queries on any orgsync database. The inbox figures are shared with the receiver's
``/metrics`` (:func:`inbox_health`).
"""

import re
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from orgsync_pipeline.store import sync_runs
from orgsync_pipeline.store.inbox import InboxStatus
from orgsync_pipeline.store.schema import (
    membership_tombstones,
    organization_members,
    organizations,
    profiles,
    sync_quarantine,
    webhook_inbox,
)

SYNCED_TABLES = (organizations, profiles, organization_members)
# In the order status reports and /metrics show them.
INBOX_STATUSES = (
    InboxStatus.PENDING,
    InboxStatus.FAILED,
    InboxStatus.DEAD,
    InboxStatus.QUARANTINED,
    InboxStatus.APPLIED,
    InboxStatus.IGNORED,
)
LAG_WINDOW = "1 hour"
_WRITE_COUNTS = ("rows_inserted", "rows_updated", "rows_deleted")


@dataclass(frozen=True)
class TableStatus:
    """One synced table: its rows, its latest full sync, and its latest write with the write's path."""

    table: str
    rows: int
    deleted_rows: int
    last_full_sync_at: datetime | None
    last_full_sync_outcome: str | None
    last_full_sync_error: str | None
    last_write_at: datetime | None
    last_write_path: str | None


@dataclass(frozen=True)
class InboxHealth:
    """The webhook inbox: events per status, the oldest pending one, apply lag over the last hour."""

    by_status: dict[str, int]
    oldest_pending_age_seconds: float | None
    applied_last_hour: int
    apply_lag_p50_seconds: float | None
    apply_lag_p95_seconds: float | None
    apply_lag_max_seconds: float | None

    @property
    def pending(self) -> int:
        return self.by_status.get(InboxStatus.PENDING, 0)

    @property
    def failed(self) -> int:
        return self.by_status.get(InboxStatus.FAILED, 0)

    @property
    def dead(self) -> int:
        return self.by_status.get(InboxStatus.DEAD, 0)


@dataclass(frozen=True)
class Status:
    """Everything ``orgsync status`` shows."""

    generated_at: datetime
    tables: list[TableStatus]
    inbox: InboxHealth
    quarantine: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (times as ISO 8601 strings)."""
        return _jsonable_dict(
            {
                "generated_at": self.generated_at,
                "tables": [asdict(table) for table in self.tables],
                "inbox": {
                    **asdict(self.inbox),
                    "pending": self.inbox.pending,
                    "failed": self.inbox.failed,
                    "dead": self.inbox.dead,
                },
                "quarantine": self.quarantine,
            }
        )


def collect_status(engine: Engine) -> Status:
    """Read the status of the database behind ``engine`` in one read-only transaction."""
    with engine.connect() as conn:
        now = conn.execute(sa.select(sa.func.now())).scalar_one()
        last_syncs = sync_runs.latest(conn)
        last_writes = _last_logged_writes(conn)
        tables = [
            _table_status(conn, table, last_syncs.get(table.name), last_writes.get(table.name, {}))
            for table in SYNCED_TABLES
        ]
        return Status(now, tables, inbox_health(conn), quarantine_by_reason(conn))


def _table_status(
    conn: Connection, table: sa.Table, last_sync: sync_runs.LastSync | None, logged: dict[str, datetime]
) -> TableStatus:
    rows = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
    if "deleted_at" in table.c:
        deleted = conn.execute(
            sa.select(sa.func.count()).select_from(table).where(table.c.deleted_at.is_not(None))
        ).scalar_one()
    else:  # memberships are deleted for real; their tombstones count them
        deleted = conn.execute(sa.select(sa.func.count()).select_from(membership_tombstones)).scalar_one()
    writes = dict(logged)
    full_sync_write = _last_full_sync_write(conn, table.name)
    if full_sync_write is not None:
        writes["full_sync"] = full_sync_write
    path, written_at = max(writes.items(), key=lambda item: item[1], default=(None, None))
    return TableStatus(
        table=table.name,
        rows=rows,
        deleted_rows=deleted,
        last_full_sync_at=last_sync.finished_at or last_sync.started_at if last_sync else None,
        last_full_sync_outcome=last_sync.outcome if last_sync else None,
        last_full_sync_error=last_sync.error if last_sync else None,
        last_write_at=written_at,
        last_write_path=path,
    )


def _last_full_sync_write(conn: Connection, table: str) -> datetime | None:
    """When the latest successful full sync that changed rows of ``table`` finished."""
    runs = sync_runs.sync_runs
    changed = sa.or_(*(runs.c.counts[name].as_integer() > 0 for name in _WRITE_COUNTS))
    finished_at: datetime | None = conn.execute(
        sa.select(sa.func.max(runs.c.finished_at)).where(
            runs.c.table_name == table, runs.c.outcome == "success", changed
        )
    ).scalar_one()
    return finished_at


def _last_logged_writes(conn: Connection) -> dict[str, dict[str, datetime]]:
    """Per table, per path ("webhook", "on_demand"): the latest write in ``write_log``, when the
    database has that log."""
    if not sa.inspect(conn).has_table("write_log"):
        return {}
    from orgsync_pipeline.store.write_log import write_log

    rows = conn.execute(
        sa.select(write_log.c.table_name, write_log.c.path, sa.func.max(write_log.c.written_at)).group_by(
            write_log.c.table_name, write_log.c.path
        )
    ).all()
    latest: dict[str, dict[str, datetime]] = {}
    for table, path, written_at in rows:
        latest.setdefault(table, {})[path] = written_at
    return latest


def inbox_health(conn: Connection) -> InboxHealth:
    """Events per status, the oldest pending event's age, and apply lag (receipt → applied) over
    the last hour."""
    inbox = webhook_inbox
    by_status: dict[str, int] = dict(
        conn.execute(sa.select(inbox.c.status, sa.func.count()).group_by(inbox.c.status)).all()
    )
    oldest_age = conn.execute(
        sa.select(sa.func.extract("epoch", sa.func.now() - sa.func.min(inbox.c.received_at))).where(
            inbox.c.status == InboxStatus.PENDING
        )
    ).scalar_one()
    lag = sa.func.extract("epoch", inbox.c.applied_at - inbox.c.received_at)
    applied, p50, p95, lag_max = conn.execute(
        sa.select(
            sa.func.count(),
            sa.func.percentile_cont(0.5).within_group(lag),
            sa.func.percentile_cont(0.95).within_group(lag),
            sa.func.max(lag),
        ).where(
            inbox.c.status == InboxStatus.APPLIED,
            inbox.c.applied_at >= sa.func.now() - sa.cast(sa.literal(LAG_WINDOW), sa.Interval),
        )
    ).one()
    return InboxHealth(
        by_status={status: by_status.get(status, 0) for status in (*INBOX_STATUSES, *by_status)},
        oldest_pending_age_seconds=_float(oldest_age),
        applied_last_hour=applied,
        apply_lag_p50_seconds=_float(p50),
        apply_lag_p95_seconds=_float(p95),
        apply_lag_max_seconds=_float(lag_max),
    )


def quarantine_by_reason(conn: Connection) -> dict[str, int]:
    """Quarantined records per entity and kind of reason (the reason without the offending values)."""
    rows = conn.execute(
        sa.select(sync_quarantine.c.entity, sync_quarantine.c.reason, sa.func.count()).group_by(
            sync_quarantine.c.entity, sync_quarantine.c.reason
        )
    ).all()
    counts: dict[str, int] = {}
    for entity, reason, count in rows:
        key = f"{entity}: {reason_kind(reason)}"
        counts[key] = counts.get(key, 0) + count
    return dict(sorted(counts.items(), key=lambda item: (-item[1], item[0])))


def reason_kind(reason: str) -> str:
    """A quarantine reason without the values it quotes, so equal problems count together."""
    kinds = []
    for part in reason.split("; "):
        part = re.sub(r" \(got .*\)$", "", part)
        part = re.sub(r"^\((.*)\) appears", lambda m: f"({_key_names(m.group(1))}) appears", part)
        part = re.sub(r"^([^\s(]\S*) .+ appears more than once", r"\1 appears more than once", part)
        kinds.append(part)
    return "; ".join(dict.fromkeys(kinds))


def _key_names(pairs: str) -> str:
    return ", ".join(pair.split("=", 1)[0] for pair in pairs.split(", "))


def render_status(status: Status) -> str:
    """The status as a few aligned lines an operator reads in a second."""
    lines = [f"orgsync status at {_time(status.generated_at)}", ""]
    lines.append(f"{'table':<22} {'rows':>8} {'deleted':>8}  {'last full sync':<32} last write")
    for t in status.tables:
        sync = (
            f"{_time(t.last_full_sync_at)} {t.last_full_sync_outcome}"
            if t.last_full_sync_outcome
            else "never"
        )
        write = f"{_time(t.last_write_at)} via {t.last_write_path}" if t.last_write_path else "never"
        lines.append(f"{t.table:<22} {t.rows:>8} {t.deleted_rows:>8}  {sync:<32} {write}")
        if t.last_full_sync_outcome == "failure" and t.last_full_sync_error:
            lines.append(f"{'':<22}   last sync failed: {t.last_full_sync_error.splitlines()[0]}")
    inbox = status.inbox
    lines += [
        "",
        f"webhook inbox: {inbox.pending} pending, {inbox.failed} failed, {inbox.dead} dead; "
        f"oldest pending {_seconds(inbox.oldest_pending_age_seconds)}",
        f"apply lag, last hour: p95 {_seconds(inbox.apply_lag_p95_seconds)}, "
        f"max {_seconds(inbox.apply_lag_max_seconds)} over {inbox.applied_last_hour} events",
        "",
        "quarantine: " + ("empty" if not status.quarantine else f"{sum(status.quarantine.values())} records"),
    ]
    lines += [f"  {count:>6}  {reason}" for reason, count in status.quarantine.items()]
    return "\n".join(lines)


def _time(moment: datetime | None) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S%z") if moment else "-"


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} s"


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _jsonable_dict(value: dict[str, Any]) -> dict[str, Any]:
    return {key: _jsonable(item) for key, item in value.items()}


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _jsonable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_jsonable(item) for item in value]
    if isinstance(value, datetime):
        return value.isoformat()
    return value
