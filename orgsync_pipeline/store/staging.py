"""Temporary tables that rows pass through on their way into the synced tables, filled with ``COPY``.

Two lifetimes:

- A *stage* holds one apply call's rows and is dropped at commit (``apply`` merges from it).
- A *listing* holds a full sync's complete listing, page by page, for the whole session of one
  connection: each chunk of pages is copied in as it arrives and dropped from memory, so a full sync's
  memory does not grow with the instance. ``listing_seen`` keeps the key of every record the listing
  had, valid or not, so deletions are computed by an anti-join in SQL.

Timestamps stay Clerk's milliseconds here; the merge converts them exactly with
``orgsync_ms_to_timestamptz`` (sql/0001).
"""

from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, get_args, get_type_hints

import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.dialects import postgresql as pg
from sqlalchemy.engine import Connection, Engine

from orgsync_pipeline.rows import MembershipRow, OrganizationRow, ProfileRow

ColumnSpec = tuple[tuple[str, Any], ...]


def _columns_of(row_type: type[tuple[Any, ...]]) -> ColumnSpec:
    """A stage's columns from the row type ``COPY`` writes into it, in its field order: integers (Clerk's
    millisecond timestamps) as bigint, ``public_metadata`` (JSON text) as jsonb, the rest as text."""
    hints = get_type_hints(row_type)
    return tuple(
        (
            name,
            pg.JSONB
            if name == "public_metadata"
            else sa.BigInteger
            if int in _types(hints[name])
            else sa.Text,
        )
        for name in row_type._fields  # type: ignore[attr-defined]
    )


def _types(hint: Any) -> tuple[Any, ...]:
    return get_args(hint) or (hint,)


ORGANIZATION_COLUMNS = _columns_of(OrganizationRow)
PROFILE_COLUMNS = _columns_of(ProfileRow)
MEMBERSHIP_COLUMNS = _columns_of(MembershipRow)
# Every record a listing had: its id (None when unusable), a membership's pair, its updated_at (-1: none).
SEEN_COLUMNS: ColumnSpec = (
    ("id", sa.Text),
    ("organization_id", sa.Text),
    ("user_id", sa.Text),
    ("updated_at", sa.BigInteger),
)

_metadata = sa.MetaData()


def _temporary(name: str, columns: ColumnSpec, **options: Any) -> sa.Table:
    return sa.Table(
        name, _metadata, *(sa.Column(n, t) for n, t in columns), prefixes=["TEMPORARY"], **options
    )


stage_organizations = _temporary(
    "orgsync_stage_organizations", ORGANIZATION_COLUMNS, postgresql_on_commit="DROP"
)
stage_profiles = _temporary("orgsync_stage_profiles", PROFILE_COLUMNS, postgresql_on_commit="DROP")
stage_memberships = _temporary("orgsync_stage_memberships", MEMBERSHIP_COLUMNS, postgresql_on_commit="DROP")

listed_organizations = _temporary("orgsync_listed_organizations", ORGANIZATION_COLUMNS)
listed_profiles = _temporary("orgsync_listed_profiles", PROFILE_COLUMNS)
listed_memberships = _temporary("orgsync_listed_memberships", MEMBERSHIP_COLUMNS)
listing_seen = _temporary("orgsync_listing_seen", SEEN_COLUMNS)
LISTING_TABLES = (listed_organizations, listed_profiles, listed_memberships, listing_seen)


def copy_rows(conn: Connection, table: sa.Table, rows: Iterable[Sequence[Any]]) -> None:
    """Append ``rows`` (tuples in ``table``'s column order) to ``table`` with ``COPY``."""
    columns = sql.SQL(", ").join(sql.Identifier(column.name) for column in table.columns)
    with (
        _cursor(conn) as cursor,
        cursor.copy(sql.SQL("COPY {} ({}) FROM STDIN").format(sql.Identifier(table.name), columns)) as copy,
    ):
        for row in rows:
            copy.write_row(row)


def analyze(conn: Connection, table: sa.Table) -> None:
    """Give the planner the statistics of a freshly filled temporary table (autovacuum never sees them)."""
    with _cursor(conn) as cursor:
        cursor.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table.name)))


def recreate(conn: Connection, table: sa.Table) -> None:
    """Create ``table`` empty in this session (dropping an earlier one)."""
    table.drop(conn, checkfirst=True)
    table.create(conn)


def stage_rows(conn: Connection, stage: sa.Table, rows: Sequence[Sequence[Any]]) -> int:
    """(Re)create ``stage`` in this transaction and fill it from Python rows; the number of rows."""
    recreate(conn, stage)
    copy_rows(conn, stage, rows)
    analyze(conn, stage)
    return len(rows)


def stage_newest_listed(
    conn: Connection, stage: sa.Table, listed: sa.Table, key: Sequence[str], *, record_key: str | None
) -> int:
    """(Re)create ``stage`` and fill it from ``listed``: one row per ``key``, the newest by ``updated_at``
    (offset pages can repeat a record). With ``record_key``, a row is left out when the listing also held a
    newer version of the same record that failed validation: the newest version is the one that counts."""
    recreate(conn, stage)
    names = [column.name for column in stage.columns]
    ranked = sa.select(
        *(listed.c[name] for name in names),
        sa.func.row_number()
        .over(partition_by=[listed.c[name] for name in key], order_by=listed.c.updated_at.desc())
        .label("rank"),
    )
    if record_key is not None:
        seen = listing_seen
        ranked = ranked.where(
            ~sa.exists().where(seen.c.id == listed.c[record_key], seen.c.updated_at > listed.c.updated_at)
        )
    newest = ranked.subquery()
    source = sa.select(*(newest.c[name] for name in names)).where(newest.c.rank == 1)
    conn.execute(sa.insert(stage).from_select(names, source))
    analyze(conn, stage)
    return int(conn.execute(sa.select(sa.func.count()).select_from(stage)).scalar_one())


@contextmanager
def listing_session(engine: Engine) -> Iterator[Connection]:
    """A connection whose session holds empty listing tables for one full sync.

    The connection is closed afterwards rather than returned to the pool, which drops the tables with
    the session whatever state a failure left it in.
    """
    with engine.connect() as conn:
        try:
            with conn.begin():
                for table in LISTING_TABLES:
                    recreate(conn, table)
            yield conn
        finally:
            conn.invalidate()


def seen_count(conn: Connection) -> int:
    """How many distinct records the listing held (records without a usable id each count)."""
    seen = listing_seen
    distinct_ids = sa.select(sa.func.count(sa.distinct(seen.c.id))).scalar_subquery()
    without_id = sa.select(sa.func.count()).where(seen.c.id.is_(None)).scalar_subquery()
    return int(conn.execute(sa.select(distinct_ids + without_id)).scalar_one())


def chunked(pages: Iterable[list[Any]], records: int) -> Iterator[list[Any]]:
    """Pages regrouped into lists of at least ``records`` records (the last may be smaller)."""
    chunk: list[Any] = []
    for page in pages:
        chunk.extend(page)
        if len(chunk) >= records:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _cursor(conn: Connection) -> Any:
    driver = conn.connection.driver_connection
    if driver is None:
        raise RuntimeError("the connection has no open DBAPI connection")
    return driver.cursor()
