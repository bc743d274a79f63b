"""The log of writes made outside Dagster runs, which the webhook sensor reports as materializations.

The receiver's inline apply and the on-demand syncs call :func:`record_write` in the transaction of
the write it describes, so a write is logged exactly when it commits. The sensor then reports in two
steps: :func:`take_unreported` stamps a batch with its highest id (the sensor's new cursor), and on
the next tick :func:`confirm_reported` marks the batch named by the cursor the daemon stored. A tick
whose result was lost (a crash) left its stamp unconfirmed, so those rows are reported again; ids
alone would not do, since a transaction can commit a lower id after a higher one was read.
"""

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

PATHS = ("webhook", "on_demand")
TABLES = ("organizations", "profiles", "organization_members")

write_log = sa.Table(
    "write_log",
    sa.MetaData(),
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("table_name", sa.Text, nullable=False),
    sa.Column("rows", sa.Integer, nullable=False),
    sa.Column("lag_seconds", pg.DOUBLE_PRECISION),
    sa.Column("written_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("report_batch", sa.BigInteger),
    sa.Column("reported_at", sa.DateTime(timezone=True)),
)


@dataclass(frozen=True)
class WriteReport:
    """The unreported writes to one table through one path, summed for one materialization."""

    table: str
    path: str
    writes: int
    rows: int
    first_id: int
    last_id: int
    last_written_at: datetime
    lag_seconds_max: float | None
    lag_seconds_avg: float | None


@dataclass(frozen=True)
class ReportBatch:
    """What one sensor tick reports: ``cursor`` names the batch, for :func:`confirm_reported`."""

    cursor: int | None
    reports: list[WriteReport]


def record_write(
    conn: sa.Connection, *, path: str, table: str, rows: int, lag_seconds: float | None = None
) -> None:
    """Log that ``rows`` rows of ``table`` were written through ``path`` ("webhook" or
    "on_demand"), in the caller's transaction; ``rows == 0`` logs nothing."""
    if path not in PATHS:
        raise ValueError(f"write_log path must be one of {PATHS}, got {path!r}")
    if table not in TABLES:
        raise ValueError(f"write_log table must be one of {TABLES}, got {table!r}")
    if rows < 0:
        raise ValueError(f"write_log rows must not be negative, got {rows}")
    if rows == 0:
        return
    conn.execute(
        sa.insert(write_log).values(
            path=path,
            table_name=table,
            rows=rows,
            lag_seconds=lag_seconds,
            written_at=sa.func.clock_timestamp(),
        )
    )


def confirm_reported(conn: sa.Connection, cursor: int | None) -> int:
    """Mark the batch ``cursor`` names as reported (the daemon stored it); returns how many rows."""
    if cursor is None:
        return 0
    return conn.execute(
        sa.update(write_log)
        .where(write_log.c.report_batch == cursor, write_log.c.reported_at.is_(None))
        .values(reported_at=sa.func.clock_timestamp())
    ).rowcount


def take_unreported(conn: sa.Connection, *, limit: int = 10_000) -> ReportBatch:
    """Stamp up to ``limit`` unreported writes, oldest first, as one batch and summarise them per
    table and path. The batch's cursor is its highest id; nothing is marked reported yet."""
    ids = (
        sa.select(write_log.c.id)
        .where(write_log.c.reported_at.is_(None))
        .order_by(write_log.c.id)
        .limit(limit)
        .scalar_subquery()
    )
    cursor = conn.execute(sa.select(sa.func.max(write_log.c.id)).where(write_log.c.id.in_(ids))).scalar()
    if cursor is None:
        return ReportBatch(None, [])
    # Recomputing the ids here could pick up rows committed meanwhile; they join this batch too.
    conn.execute(
        sa.update(write_log)
        .where(write_log.c.reported_at.is_(None), write_log.c.id <= cursor)
        .values(report_batch=cursor)
    )
    rows = conn.execute(
        sa.select(
            write_log.c.table_name,
            write_log.c.path,
            sa.func.count(),
            sa.func.sum(write_log.c.rows),
            sa.func.min(write_log.c.id),
            sa.func.max(write_log.c.id),
            sa.func.max(write_log.c.written_at),
            sa.func.max(write_log.c.lag_seconds),
            sa.func.avg(write_log.c.lag_seconds),
        )
        .where(write_log.c.report_batch == cursor, write_log.c.reported_at.is_(None))
        .group_by(write_log.c.table_name, write_log.c.path)
        .order_by(write_log.c.table_name, write_log.c.path)
    ).all()
    reports = [
        WriteReport(
            table=table,
            path=path,
            writes=writes,
            rows=int(total),
            first_id=first_id,
            last_id=last_id,
            last_written_at=last_written_at,
            lag_seconds_max=None if lag_max is None else float(lag_max),
            lag_seconds_avg=None if lag_avg is None else float(lag_avg),
        )
        for table, path, writes, total, first_id, last_id, last_written_at, lag_max, lag_avg in rows
    ]
    return ReportBatch(cursor, reports)


def unreported_count(conn: sa.Connection) -> int:
    """How many logged writes have not been confirmed as reported yet."""
    return conn.execute(
        sa.select(sa.func.count()).select_from(write_log).where(write_log.c.reported_at.is_(None))
    ).scalar_one()
