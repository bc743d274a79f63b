"""A full sync's first load of memberships into an empty table drops the table's indexes and foreign
keys and builds them again afterwards (sql/0007_bulk_load.sql): the rows that land, and the table's
definition, must be the same as with the row-by-row merge."""

import dagster as dg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from orgsync_pipeline.clerk.emulator import ClerkEmulator
from orgsync_pipeline.definitions import defs
from orgsync_pipeline.store import apply
from orgsync_pipeline.store.schema import organization_members, organizations, profiles, sync_quarantine


def run_full_sync() -> None:
    result = defs.resolve_job_def("clerk_full_sync").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )
    assert result.success


def table_definition(engine: Engine) -> dict[str, object]:
    """organization_members' indexes and constraints as the catalog states them, with their oids
    (which change when they are built again)."""
    with engine.connect() as conn:
        indexes = conn.execute(
            sa.text(
                "SELECT indexrelid::regclass::text, indexrelid, pg_get_indexdef(indexrelid) FROM pg_index "
                "WHERE indrelid = 'organization_members'::regclass"
            )
        ).all()
        constraints = conn.execute(
            sa.text(
                "SELECT conname, pg_get_constraintdef(oid) FROM pg_constraint "
                "WHERE conrelid = 'organization_members'::regclass"
            )
        ).all()
    return {
        "indexes": {name: definition for name, _oid, definition in indexes},
        "index_oids": {oid for _name, oid, _definition in indexes},
        "constraints": dict(constraints),
    }


def landed(engine: Engine) -> dict[str, set[tuple[object, ...]]]:
    with engine.connect() as conn:
        return {
            "members": set(
                conn.execute(
                    sa.select(
                        *(
                            organization_members.c[name]
                            for name in (
                                "organization_id",
                                "user_id",
                                "clerk_membership_id",
                                "role",
                                "joined_at",
                            )
                        )
                    )
                )
            ),
            "quarantine": set(conn.execute(sa.select(sync_quarantine.c.entity, sync_quarantine.c.clerk_id))),
        }


def seed(emulator: ClerkEmulator) -> None:
    emulator.seed_sample(organizations=6, users=9, memberships_per_org=3)
    bad = emulator.create_organization("Bad metadata")["id"]
    emulator.update_organization(bad, public_metadata=["not", "an", "object"])
    emulator.create_membership(bad, next(iter(emulator.users)))  # an orphan: quarantined


def empty_tables(engine: Engine) -> None:
    with engine.begin() as conn:
        for table in (organization_members, sync_quarantine, profiles, organizations):
            conn.execute(sa.delete(table))


def test_a_first_load_with_deferred_indexes_lands_what_the_merge_lands(
    emulator: ClerkEmulator, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(emulator)
    run_full_sync()  # the batch is under BULK_LOAD_MIN_ROWS: merged row by row
    merged, definition = landed(engine), table_definition(engine)
    assert merged["members"]
    assert {entity for entity, _clerk_id in merged["quarantine"]} == {"organization", "membership"}

    empty_tables(engine)
    monkeypatch.setattr(apply, "BULK_LOAD_MIN_ROWS", 1)
    run_full_sync()
    rebuilt = table_definition(engine)

    assert landed(engine) == merged
    assert rebuilt["indexes"] == definition["indexes"]
    assert rebuilt["constraints"] == definition["constraints"]
    assert rebuilt["index_oids"].isdisjoint(definition["index_oids"])  # built again: the bulk path ran
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:  # the foreign keys hold again
        conn.execute(
            sa.insert(organization_members).values(
                organization_id="org_missing", user_id="user_missing", role="member", clerk_role="org:member"
            )
        )


def test_a_table_that_holds_rows_is_merged_in_place(
    emulator: ClerkEmulator, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(emulator)
    run_full_sync()
    before = table_definition(engine)
    monkeypatch.setattr(apply, "BULK_LOAD_MIN_ROWS", 1)
    emulator.seed_sample(organizations=2, users=3, memberships_per_org=2)
    run_full_sync()

    assert table_definition(engine) == before
    assert len(landed(engine)["members"]) == sum(
        1 for m in emulator.memberships.values() if m["organization"]["name"] != "Bad metadata"
    )


def test_an_empty_table_a_reader_holds_is_merged_without_waiting_for_it(
    emulator: ClerkEmulator, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    seed(emulator)
    monkeypatch.setattr(apply, "BULK_LOAD_MIN_ROWS", 1)
    before = table_definition(engine)
    with engine.connect() as reader:
        reader.execute(sa.select(sa.func.count()).select_from(organization_members))  # holds ACCESS SHARE
        run_full_sync()
        reader.rollback()

    assert table_definition(engine) == before
    assert landed(engine)["members"]


def test_new_memberships_get_time_ordered_ids(engine: Engine) -> None:
    """organization_members.id defaults to a version-7 UUID: its first 48 bits are the time in ms."""
    with engine.begin() as conn:
        conn.execute(sa.insert(organizations).values(id="org_1", name="One"))
        conn.execute(sa.insert(profiles).values([{"id": "user_1"}, {"id": "user_2"}]))
        ids = []
        for user_id in ("user_1", "user_2"):
            ids.append(
                conn.execute(
                    sa.insert(organization_members)
                    .values(organization_id="org_1", user_id=user_id, role="member", clerk_role="org:member")
                    .returning(organization_members.c.id)
                ).scalar_one()
            )
            conn.execute(sa.select(sa.func.pg_sleep(0.002)))
        now_ms = conn.execute(
            sa.text("SELECT floor(extract(epoch FROM clock_timestamp()) * 1000)")
        ).scalar_one()

    assert [uid.version for uid in ids] == [7, 7]
    assert ids[0] < ids[1]
    assert 0 <= now_ms - (ids[1].int >> 80) < 60_000
