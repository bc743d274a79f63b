"""The full sync streams its listing through PostgreSQL in chunks: results must not depend on where the
chunks break, and the staged listing keeps the newest version of each record."""

import dagster as dg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from orgsync_pipeline import sync
from orgsync_pipeline.clerk.emulator import ClerkEmulator
from orgsync_pipeline.definitions import defs
from orgsync_pipeline.rows import OrganizationRow
from orgsync_pipeline.store import staging
from orgsync_pipeline.store.schema import organization_members, organizations, profiles, sync_quarantine


def run_full_sync() -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("clerk_full_sync").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )


def table_rows(engine: Engine) -> dict[str, set[tuple[object, ...]]]:
    with engine.connect() as conn:
        return {
            "organizations": set(
                conn.execute(sa.select(organizations.c.id, organizations.c.name, organizations.c.deleted_at))
            ),
            "profiles": set(conn.execute(sa.select(profiles.c.id, profiles.c.email, profiles.c.deleted_at))),
            "members": set(
                conn.execute(
                    sa.select(
                        organization_members.c.organization_id,
                        organization_members.c.user_id,
                        organization_members.c.role,
                    )
                )
            ),
            "quarantine": set(conn.execute(sa.select(sync_quarantine.c.entity, sync_quarantine.c.clerk_id))),
        }


def test_chunk_size_does_not_change_what_lands(
    emulator: ClerkEmulator, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chunks of 3 records land the same tables, quarantine and deletions as one chunk for everything."""
    emulator.seed_sample(organizations=7, users=11, memberships_per_org=3)
    bad = emulator.create_organization("Bad metadata")["id"]
    emulator.update_organization(bad, public_metadata=["not", "an", "object"])
    gone = next(iter(emulator.organizations))

    assert run_full_sync().success
    emulator.delete_organization(gone)
    assert run_full_sync().success
    whole = table_rows(engine)

    monkeypatch.setattr(sync, "CHUNK_RECORDS", 3)
    with engine.begin() as conn:
        for table in (organization_members, sync_quarantine, profiles, organizations):
            conn.execute(sa.delete(table))
    emulator.create_organization("Added later")
    assert run_full_sync().success
    gone_again = next(org_id for org_id in emulator.organizations if org_id != bad)
    emulator.delete_organization(gone_again)
    result = run_full_sync()
    chunked = table_rows(engine)

    assert result.success
    assert ("organization", bad) in chunked["quarantine"] and ("organization", bad) in whole["quarantine"]
    live = {row[0] for row in chunked["organizations"] if row[2] is None}
    assert live == set(emulator.organizations) - {bad}
    assert gone_again in {row[0] for row in chunked["organizations"] if row[2] is not None}
    assert {row[0] for row in chunked["profiles"]} == set(emulator.users)
    assert {(m, u) for m, u, _ in chunked["members"]} == {
        (m["organization"]["id"], m["public_user_data"]["user_id"])
        for m in emulator.memberships.values()
        if m["organization"]["id"] != bad
    }


def org_row(org_id: str, name: str, updated_at: int) -> OrganizationRow:
    return OrganizationRow(org_id, name, None, None, "{}", 10**12, updated_at)


def test_staged_listing_keeps_the_newest_valid_version(engine: Engine) -> None:
    """Offset pages can list a record twice: the newest version is merged; when the newest version failed
    validation, no older version of it is merged (its quarantine stands)."""
    t1, t2, t3 = 10**12 + 1, 10**12 + 2, 10**12 + 3
    with staging.listing_session(engine) as conn:
        with conn.begin():
            staging.copy_rows(
                conn,
                staging.listed_organizations,
                [org_row("org_a", "old", t1), org_row("org_a", "new", t2), org_row("org_b", "valid", t1)],
            )
            seen = [("org_a", None, None, t1), ("org_a", None, None, t2), ("org_b", None, None, t1)]
            staging.copy_rows(conn, staging.listing_seen, [*seen, ("org_b", None, None, t3)])
        with conn.begin():
            staged = staging.stage_newest_listed(
                conn, staging.stage_organizations, staging.listed_organizations, ["id"], record_key="id"
            )
            rows = conn.execute(
                sa.select(staging.stage_organizations.c.id, staging.stage_organizations.c.name)
            )
            assert (staged, set(rows)) == (1, {("org_a", "new")})
