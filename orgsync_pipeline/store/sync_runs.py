"""The record of full syncs, one row per table per run, for ``orgsync status``.

A row is committed when the sync starts (outcome ``running``) and updated when it ends, so a sync
that died without finishing still shows as the last one, never finished.
"""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Engine

log = logging.getLogger(__name__)

TABLES = ("organizations", "profiles", "organization_members")
ERROR_MAX_CHARS = 2000

sync_runs = sa.Table(
    "sync_runs",
    sa.MetaData(),
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("table_name", sa.Text, nullable=False),
    sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("finished_at", sa.DateTime(timezone=True)),
    sa.Column("outcome", sa.Text, nullable=False),
    sa.Column("counts", pg.JSONB),
    sa.Column("error", sa.Text),
    sa.Column("run_id", sa.Text),
)


@dataclass
class SyncRun:
    """A started full sync of one table; set ``counts`` before the block ends to record them."""

    id: int
    engine: Engine
    counts: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LastSync:
    """The latest full sync of one table."""

    table: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str
    counts: dict[str, Any] | None
    error: str | None


def start(engine: Engine, table: str, run_id: str | None = None) -> int:
    """Record that a full sync of ``table`` starts now; returns its id."""
    if table not in TABLES:
        raise ValueError(f"sync_runs table must be one of {TABLES}, got {table!r}")
    with engine.begin() as conn:
        run_id_of_row: int = conn.execute(
            sa.insert(sync_runs)
            .values(table_name=table, started_at=sa.func.clock_timestamp(), outcome="running", run_id=run_id)
            .returning(sync_runs.c.id)
        ).scalar_one()
    return run_id_of_row


def finish(
    engine: Engine,
    sync_id: int,
    *,
    outcome: str,
    counts: dict[str, Any] | None = None,
    error: str | None = None,
) -> None:
    """Record how the full sync ``sync_id`` ended ("success" or "failure")."""
    with engine.begin() as conn:
        conn.execute(
            sa.update(sync_runs)
            .where(sync_runs.c.id == sync_id)
            .values(
                finished_at=sa.func.clock_timestamp(),
                outcome=outcome,
                counts=counts,
                error=None if error is None else error[:ERROR_MAX_CHARS],
            )
        )


@contextmanager
def recorded(engine: Engine, table: str, run_id: str | None = None) -> Iterator[SyncRun]:
    """Record the full sync run inside the block: started now, then success or failure (with the
    operator's message for an expected failure, the exception's type otherwise)."""
    run = SyncRun(start(engine, table, run_id), engine)
    try:
        yield run
    except BaseException as exc:
        from orgsync_pipeline.failures import describe, redact

        problem = describe(exc) if isinstance(exc, Exception) else None
        error = problem.message if problem else redact(f"{type(exc).__name__}: {exc}")
        try:
            finish(engine, run.id, outcome="failure", counts=run.counts or None, error=error)
        except sa.exc.SQLAlchemyError as record_error:
            # The database that failed the sync may also refuse the record; the sync's error wins.
            log.warning("could not record the failed sync of %s: %s", table, type(record_error).__name__)
        raise
    finish(engine, run.id, outcome="success", counts=run.counts)


def latest(conn: sa.Connection) -> dict[str, LastSync]:
    """The latest full sync of each table that has one."""
    ranked = sa.select(
        sync_runs,
        sa.func.row_number()
        .over(partition_by=sync_runs.c.table_name, order_by=sync_runs.c.started_at.desc())
        .label("rank"),
    ).subquery()
    rows = conn.execute(sa.select(ranked).where(ranked.c.rank == 1)).all()
    return {
        row.table_name: LastSync(
            table=row.table_name,
            started_at=row.started_at,
            finished_at=row.finished_at,
            outcome=row.outcome,
            counts=row.counts,
            error=row.error,
        )
        for row in rows
    }
