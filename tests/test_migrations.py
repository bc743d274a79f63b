"""The migrations runner over ``sql/``: fresh schemas, re-runs, concurrency, edits, the seed's schema."""

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from orgsync_pipeline.store.database import (
    MIGRATION_LOCK_KEY,
    MigrationError,
    SchemaNotMigratedError,
    ensure_schema,
    migrate,
    migrations,
    pending_migrations,
)

VERSIONS = [
    "0001_sync_tables",
    "0002_organization_ids_to_text",
    "0003_webhook_inbox",
    "0004_write_log",
    "0005_row_level_security",
    "0006_sync_runs",
    "0007_bulk_load",
    "0008_time_ordered_member_ids",
]
SYNC_TABLES = (
    "organizations",
    "profiles",
    "organization_members",
    "membership_tombstones",
    "sync_quarantine",
)


@pytest.fixture
def plain_engine(database_url: str) -> Iterator[Engine]:
    """An engine on the test's fresh schema that has not been migrated."""
    engine = sa.create_engine(database_url)
    yield engine
    engine.dispose()


def _columns(conn: Connection, table: str) -> dict[str, str]:
    rows = conn.execute(
        sa.text(
            "SELECT column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND table_name = :table"
        ),
        {"table": table},
    )
    return dict(rows.tuples().all())


def _enum_labels(conn: Connection, name: str = "org_role") -> list[str]:
    return list(
        conn.execute(
            sa.text(
                "SELECT e.enumlabel FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid "
                "JOIN pg_namespace n ON n.oid = t.typnamespace "
                "WHERE t.typname = :name AND n.nspname = current_schema() ORDER BY e.enumsortorder"
            ),
            {"name": name},
        ).scalars()
    )


def _foreign_keys(conn: Connection) -> set[tuple[str, str, str]]:
    """(table, column, referenced table) for every foreign key in the current schema."""
    rows = conn.execute(
        sa.text(
            "SELECT c.conrelid::regclass::text, a.attname, c.confrelid::regclass::text "
            "FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1] "
            "JOIN pg_namespace n ON n.oid = c.connamespace "
            "WHERE c.contype = 'f' AND n.nspname = current_schema()"
        )
    )
    return set(rows.tuples().all())


def _recorded(conn: Connection) -> list[tuple[str, str]]:
    return list(
        conn.execute(sa.text("SELECT version, checksum FROM orgsync_migrations ORDER BY version")).tuples()
    )


def _snapshot(engine: Engine, tables: tuple[str, ...]) -> dict[str, Any]:
    """Columns, constraints, indexes, the enum, recorded migrations and every row of ``tables``."""
    with engine.connect() as conn:
        columns = conn.execute(
            sa.text(
                "SELECT table_name, column_name, data_type, is_nullable, column_default "
                "FROM information_schema.columns WHERE table_schema = current_schema() "
                "ORDER BY table_name, column_name"
            )
        ).all()
        constraints = conn.execute(
            sa.text(
                "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(c.oid) FROM pg_constraint c "
                "JOIN pg_namespace n ON n.oid = c.connamespace WHERE n.nspname = current_schema() "
                "ORDER BY 1, 2"
            )
        ).all()
        indexes = conn.execute(
            sa.text(
                "SELECT tablename, indexname, indexdef FROM pg_indexes "
                "WHERE schemaname = current_schema() ORDER BY 1, 2"
            )
        ).all()
        rows = {
            table: conn.execute(sa.text(f"SELECT to_jsonb(t)::text FROM {table} t ORDER BY 1"))
            .scalars()
            .all()
            for table in tables
        }
        return {
            "columns": columns,
            "constraints": constraints,
            "indexes": indexes,
            "enum": _enum_labels(conn),
            "migrations": conn.execute(sa.text("SELECT * FROM orgsync_migrations ORDER BY 1")).all(),
            "rows": rows,
        }


# ------------------------------------------------------------------------------- fresh schema


def test_fresh_schema_gets_every_migration(plain_engine: Engine) -> None:
    """On an empty schema both migrations apply, are recorded with their checksums, and build the tables."""
    applied = migrate(plain_engine)

    assert applied == VERSIONS
    assert [m.version for m in migrations()] == VERSIONS
    with plain_engine.connect() as conn:
        assert _recorded(conn) == [(m.version, m.checksum) for m in migrations()]
        assert _enum_labels(conn) == ["owner", "admin", "member", "viewer"]

        organizations = _columns(conn, "organizations")
        assert organizations["id"] == "text"
        assert organizations["public_metadata"] == "jsonb"
        assert {"name", "slug", "image_url", "created_at", "updated_at", "deleted_at", "synced_at"} <= set(
            organizations
        )
        assert organizations["updated_at"] == "timestamp with time zone"

        assert {"id", "email", "first_name", "last_name", "image_url", "deleted_at", "synced_at"} <= set(
            _columns(conn, "profiles")
        )
        members = _columns(conn, "organization_members")
        assert members["role"] == "USER-DEFINED"
        assert members["organization_id"] == "text"
        assert {
            "clerk_membership_id",
            "user_id",
            "clerk_role",
            "joined_at",
            "updated_at",
            "synced_at",
        } <= set(members)
        assert set(_columns(conn, "membership_tombstones")) == {
            "organization_id",
            "user_id",
            "clerk_membership_id",
            "deleted_at",
        }
        assert {"entity", "clerk_id", "reason", "payload", "source", "record_key"} <= set(
            _columns(conn, "sync_quarantine")
        )
        assert {
            ("organization_members", "organization_id", "organizations"),
            ("organization_members", "user_id", "profiles"),
        } <= _foreign_keys(conn)
        # The exact ms → timestamptz conversion the apply layer relies on.
        converted = conn.execute(
            sa.text("SELECT orgsync_ms_to_timestamptz(1716883200123) = '2024-05-28 08:00:00.123+00'")
        ).scalar_one()
        assert converted is True


def test_jobs_fail_naming_the_command_when_auto_migrate_is_off(plain_engine: Engine) -> None:
    """With ORGSYNC_AUTO_MIGRATE off a job's schema check changes nothing and names `orgsync migrate`;
    reading what is pending runs no DDL; with it on, the check migrates."""
    assert pending_migrations(plain_engine) == VERSIONS
    with pytest.raises(SchemaNotMigratedError, match="orgsync migrate"):
        ensure_schema(plain_engine, auto_migrate=False)
    with plain_engine.connect() as conn:
        assert sa.inspect(conn).get_table_names() == []

    ensure_schema(plain_engine, auto_migrate=True)

    assert pending_migrations(plain_engine) == []
    ensure_schema(plain_engine, auto_migrate=False)  # nothing pending: passes


def test_second_migrate_applies_nothing_and_changes_nothing(plain_engine: Engine) -> None:
    """Re-running migrate on an up-to-date schema applies nothing and leaves schema and records alone."""
    migrate(plain_engine)
    before = _snapshot(plain_engine, SYNC_TABLES)

    assert migrate(plain_engine) == []

    assert _snapshot(plain_engine, SYNC_TABLES) == before


def test_concurrent_migrate_applies_each_version_once(database_url: str) -> None:
    """Two runners started together (two engines, one schema) both succeed; every version is applied once."""
    engines = [sa.create_engine(database_url) for _ in range(2)]
    barrier = threading.Barrier(len(engines))
    results: list[list[str]] = []
    errors: list[BaseException] = []

    def run(engine: Engine) -> None:
        try:
            barrier.wait(timeout=10)
            results.append(migrate(engine))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(engine,)) for engine in engines]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert errors == []
        assert sorted(version for applied in results for version in applied) == VERSIONS
        assert sorted(results, key=len) == [[], VERSIONS]
        with engines[0].connect() as conn:
            assert [version for version, _ in _recorded(conn)] == VERSIONS
    finally:
        for engine in engines:
            engine.dispose()


def test_edited_applied_migration_is_detected(plain_engine: Engine) -> None:
    """A recorded checksum that no longer matches its file raises MigrationError naming the version."""
    migrate(plain_engine)
    with plain_engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE orgsync_migrations SET checksum = 'edited' WHERE version = :version"),
            {"version": VERSIONS[0]},
        )

    with pytest.raises(MigrationError, match=VERSIONS[0]):
        migrate(plain_engine)

    # The advisory lock is released even though the run failed.
    with plain_engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.pg_try_advisory_lock(MIGRATION_LOCK_KEY))).scalar_one()
        conn.execute(sa.select(sa.func.pg_advisory_unlock(MIGRATION_LOCK_KEY)))


# ------------------------------------------------------------------------------- adopting the seed's schema

ORG_A = uuid.UUID("6f1b7e0a-3c2d-4e5f-8a9b-0c1d2e3f4a5b")
ORG_B = uuid.UUID("9a8b7c6d-5e4f-4321-8fed-cba987654321")

LEGACY_SCHEMA = """
CREATE TYPE org_role AS ENUM ('admin', 'member');
CREATE TABLE organizations (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL,
    slug text,
    created_at timestamptz DEFAULT now()
);
CREATE TABLE profiles (id text PRIMARY KEY, email text, first_name text, last_name text);
CREATE TABLE organization_members (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    organization_id uuid NOT NULL REFERENCES organizations (id),
    user_id text NOT NULL REFERENCES profiles (id),
    role org_role NOT NULL
);
CREATE TABLE projects (id serial PRIMARY KEY, organization_id uuid REFERENCES organizations (id));
"""


@pytest.fixture
def legacy_engine(plain_engine: Engine) -> Engine:
    """The seed's first schema (uuid organization ids, a two-value enum, an app table) with data in it."""
    with plain_engine.begin() as conn:
        conn.connection.driver_connection.execute(LEGACY_SCHEMA)
        conn.execute(
            sa.text(
                "INSERT INTO organizations (id, name, slug) VALUES (:a, 'Acme', 'acme'), (:b, 'Beta', NULL)"
            ),
            {"a": ORG_A, "b": ORG_B},
        )
        conn.execute(
            sa.text(
                "INSERT INTO profiles VALUES ('user_ann1', 'ann@acme.com', 'Ann', 'A'), "
                "('user_bob1', 'bob@beta.io', 'Bob', NULL)"
            )
        )
        conn.execute(
            sa.text(
                "INSERT INTO organization_members (organization_id, user_id, role) VALUES "
                "(:a, 'user_ann1', 'admin'), (:a, 'user_bob1', 'member'), (:b, 'user_bob1', 'admin')"
            ),
            {"a": ORG_A, "b": ORG_B},
        )
        conn.execute(sa.text("INSERT INTO projects (organization_id) VALUES (:a)"), {"a": ORG_A})
    return plain_engine


def test_adopting_legacy_schema_converts_ids_and_keeps_rows(legacy_engine: Engine) -> None:
    """Migrating the seed's schema turns uuid ids into their text, keeps every row, and fills new columns."""
    with legacy_engine.connect() as conn:
        members_before = conn.execute(
            sa.text(
                "SELECT id, organization_id::text, user_id, role::text FROM organization_members ORDER BY id"
            )
        ).all()

    assert migrate(legacy_engine) == VERSIONS

    with legacy_engine.connect() as conn:
        assert _columns(conn, "organizations")["id"] == "text"
        assert _columns(conn, "organization_members")["organization_id"] == "text"
        assert _columns(conn, "projects")["organization_id"] == "text"
        assert conn.execute(sa.text("SELECT id, name, slug FROM organizations ORDER BY name")).all() == [
            (str(ORG_A), "Acme", "acme"),
            (str(ORG_B), "Beta", None),
        ]
        assert conn.execute(sa.text("SELECT id, email FROM profiles ORDER BY id")).all() == [
            ("user_ann1", "ann@acme.com"),
            ("user_bob1", "bob@beta.io"),
        ]
        members = conn.execute(
            sa.text("SELECT id, organization_id, user_id, role::text FROM organization_members ORDER BY id")
        ).all()
        assert members == members_before
        assert conn.execute(sa.text("SELECT organization_id FROM projects")).scalars().all() == [str(ORG_A)]

        clerk_roles = conn.execute(
            sa.text("SELECT user_id, organization_id, clerk_role FROM organization_members ORDER BY 1, 2")
        ).all()
        assert sorted(clerk_roles) == sorted(
            [
                ("user_ann1", str(ORG_A), "org:admin"),
                ("user_bob1", str(ORG_A), "org:member"),
                ("user_bob1", str(ORG_B), "org:admin"),
            ]
        )
        assert set(_enum_labels(conn)) == {"owner", "admin", "member", "viewer"}
        for table, new_columns in {
            "organizations": {"image_url", "public_metadata", "updated_at", "deleted_at", "synced_at"},
            "profiles": {"image_url", "created_at", "updated_at", "deleted_at", "synced_at"},
            "organization_members": {
                "clerk_membership_id",
                "clerk_role",
                "joined_at",
                "updated_at",
                "synced_at",
            },
        }.items():
            assert new_columns <= set(_columns(conn, table)), table
        # Adopted rows are marked as never written by orgsync, with empty metadata.
        assert (
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM organizations WHERE synced_at IS NULL AND public_metadata = '{}'"
                )
            ).scalar_one()
            == 2
        )
        assert {
            ("organization_members", "organization_id", "organizations"),
            ("organization_members", "user_id", "profiles"),
            ("projects", "organization_id", "organizations"),
        } <= _foreign_keys(conn)


def test_adopted_schema_still_enforces_foreign_keys(legacy_engine: Engine) -> None:
    """After conversion, members and projects cannot reference an organization that does not exist."""
    migrate(legacy_engine)

    with legacy_engine.connect() as conn:
        with pytest.raises(sa.exc.IntegrityError), conn.begin():
            conn.execute(
                sa.text(
                    "INSERT INTO organization_members (organization_id, user_id, role, clerk_role) "
                    "VALUES ('org_missing1', 'user_ann1', 'member', 'org:member')"
                )
            )
        with pytest.raises(sa.exc.IntegrityError), conn.begin():
            conn.execute(sa.text("INSERT INTO projects (organization_id) VALUES ('org_missing1')"))
        with pytest.raises(sa.exc.IntegrityError), conn.begin():
            conn.execute(sa.text("DELETE FROM organizations WHERE id = :a"), {"a": str(ORG_A)})
        # Text ids of Clerk's shape now fit, and the new enum values are usable.
        with conn.begin():
            conn.execute(
                sa.text("INSERT INTO organizations (id, name) VALUES ('org_2g7np7Hrk0SN6kj5', 'New')")
            )
            conn.execute(
                sa.text(
                    "INSERT INTO organization_members (organization_id, user_id, role, clerk_role) "
                    "VALUES ('org_2g7np7Hrk0SN6kj5', 'user_ann1', 'owner', 'org:owner'), "
                    "('org_2g7np7Hrk0SN6kj5', 'user_bob1', 'viewer', 'org:viewer')"
                )
            )
        assert (
            conn.execute(
                sa.text(
                    "SELECT count(*) FROM organization_members WHERE organization_id = 'org_2g7np7Hrk0SN6kj5'"
                )
            ).scalar_one()
            == 2
        )


def test_migrating_adopted_schema_again_changes_nothing(legacy_engine: Engine) -> None:
    """A second migrate of the adopted schema applies nothing and leaves schema and rows identical."""
    migrate(legacy_engine)
    tables = (*SYNC_TABLES, "projects")
    before = _snapshot(legacy_engine, tables)

    assert migrate(legacy_engine) == []

    after = _snapshot(legacy_engine, tables)
    assert after == before
    assert len(after["rows"]["organization_members"]) == 3


@pytest.mark.parametrize("legacy", [False, True], ids=["fresh", "adopted"])
def test_migration_files_are_idempotent(
    plain_engine: Engine, legacy: bool, request: pytest.FixtureRequest
) -> None:
    """Replaying every file on a migrated schema (records lost) succeeds and changes no object or row."""
    engine = request.getfixturevalue("legacy_engine") if legacy else plain_engine
    migrate(engine)
    tables = (*SYNC_TABLES, "projects") if legacy else SYNC_TABLES
    before = _snapshot(engine, tables)
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM orgsync_migrations"))

    assert migrate(engine) == VERSIONS

    after = _snapshot(engine, tables)
    for key in ("columns", "constraints", "indexes", "enum", "rows"):
        assert after[key] == before[key], key
