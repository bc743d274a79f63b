"""The full sync as a real Dagster job (`clerk_full_sync`), against the emulator and a real PostgreSQL."""

from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from orgsync_pipeline.clerk.emulator import ClerkEmulator
from orgsync_pipeline.definitions import defs
from orgsync_pipeline.resources import SyncPolicyResource
from orgsync_pipeline.rows import OrganizationRow
from orgsync_pipeline.store import apply
from orgsync_pipeline.store.schema import organization_members, organizations, profiles, sync_quarantine
from tests.support import clerk_resource


def run_full_sync(**kwargs: Any) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("clerk_full_sync").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False, **kwargs
    )


def metadata(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, Any]:
    events = [e for e in result.get_asset_materialization_events() if e.asset_key.to_user_string() == asset]
    assert len(events) == 1, f"expected one materialization of {asset}"
    return {key: value.value for key, value in events[0].materialization.metadata.items()}


def checks(result: dg.ExecuteInProcessResult) -> dict[tuple[str, str], bool]:
    return {
        (e.asset_key.to_user_string(), e.check_name): e.passed for e in result.get_asset_check_evaluations()
    }


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures, "expected a failed step"
    # The failed step, the operator's message (its dg.Failure description), then Dagster's error.
    return "\n".join(
        f"step {e.step_key}: {getattr(e.step_failure_data.user_failure_data, 'description', '')}\n"
        f"{e.step_failure_data.error}"
        for e in failures
    )


def live_orgs(engine: Engine) -> dict[str, str]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(organizations.c.id, organizations.c.name).where(organizations.c.deleted_at.is_(None))
        ).all()
    return dict(rows)


def members(engine: Engine) -> set[tuple[str, str, str, str]]:
    table = organization_members
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(table.c.organization_id, table.c.user_id, table.c.role, table.c.clerk_role)
        )
        return {tuple(row) for row in rows}


def clerk_members(
    emulator: ClerkEmulator, role_map: dict[str, str] | None = None
) -> set[tuple[str, str, str, str]]:
    roles = role_map or {"org:admin": "admin", "org:member": "member"}
    return {
        (m["organization"]["id"], m["public_user_data"]["user_id"], roles[m["role"]], m["role"])
        for m in emulator.memberships.values()
    }


def synced_at(engine: Engine) -> dict[str, Any]:
    """Every row's synced_at and xmax: a row that was updated, or even only locked, changes one."""
    xmax = sa.literal_column("xmax::text")
    stamps = {}
    with engine.connect() as conn:
        for table, key in (
            (organizations, "id"),
            (profiles, "id"),
            (organization_members, "clerk_membership_id"),
        ):
            rows = conn.execute(sa.select(table.c[key], table.c.synced_at, xmax)).all()
            stamps.update({row[0]: (row[1], row[2]) for row in rows})
    return stamps


@pytest.fixture
def seeded(emulator: ClerkEmulator) -> ClerkEmulator:
    emulator.seed_sample(organizations=5, users=12, memberships_per_org=3)
    return emulator


def test_full_sync_lands_clerk_in_postgres(seeded: ClerkEmulator, engine: Engine) -> None:
    """Organizations, profiles (primary email) and memberships (mapped roles) match Clerk exactly."""
    result = run_full_sync()
    assert result.success

    assert live_orgs(engine) == {org_id: org["name"] for org_id, org in seeded.organizations.items()}
    with engine.connect() as conn:
        emails = dict(conn.execute(sa.select(profiles.c.id, profiles.c.email)).all())
    assert emails == {
        user_id: next(
            e["email_address"] for e in user["email_addresses"] if e["id"] == user["primary_email_address_id"]
        )
        for user_id, user in seeded.users.items()
    }
    assert members(engine) == clerk_members(seeded)
    assert metadata(result, "organizations")["rows_inserted"] == 5
    assert metadata(result, "profiles")["rows_inserted"] == 12
    assert metadata(result, "organization_members")["rows_inserted"] == 15
    assert all(checks(result).values()), checks(result)


def test_resync_without_change_writes_nothing(seeded: ClerkEmulator, engine: Engine) -> None:
    """A second sync with no change in Clerk inserts, updates and deletes nothing, and touches no row."""
    assert run_full_sync().success
    before = synced_at(engine)

    result = run_full_sync()

    assert result.success
    for asset, rows in (("organizations", 5), ("profiles", 12), ("organization_members", 15)):
        meta = metadata(result, asset)
        assert (meta["rows_inserted"], meta["rows_updated"], meta["rows_deleted"]) == (0, 0, 0), meta
        assert (meta["rows_fetched"], meta["rows_unchanged"]) == (rows, rows), meta
    assert synced_at(engine) == before


def test_changes_in_clerk_are_applied(seeded: ClerkEmulator, engine: Engine) -> None:
    """A renamed organization, a changed email and a changed role are updated, and only those rows."""
    assert run_full_sync().success
    org_id = next(iter(seeded.organizations))
    user_id = next(iter(seeded.users))
    membership = next(iter(seeded.memberships.values()))
    seeded.update_organization(org_id, name="Renamed Inc")
    seeded.update_user(user_id, email="new.address@example.com")
    new_role = "org:member" if membership["role"] == "org:admin" else "org:admin"
    seeded.update_membership(
        membership["organization"]["id"], membership["public_user_data"]["user_id"], role=new_role
    )

    result = run_full_sync()

    assert result.success
    assert live_orgs(engine)[org_id] == "Renamed Inc"
    with engine.connect() as conn:
        assert conn.execute(sa.select(profiles.c.email).where(profiles.c.id == user_id)).scalar_one() == (
            "new.address@example.com"
        )
    assert members(engine) == clerk_members(seeded)
    assert metadata(result, "organizations")["rows_updated"] == 1
    assert metadata(result, "profiles")["rows_updated"] == 1
    assert metadata(result, "organization_members")["rows_updated"] == 1


def test_listings_page_across_the_500_boundary(emulator: ClerkEmulator, engine: Engine) -> None:
    """1201 organizations, 501 users and 1002 memberships arrive complete, 500 per page, memberships
    from the instance-wide endpoint only."""
    orgs = [emulator.create_organization(f"Org {i}")["id"] for i in range(1201)]
    users = [emulator.create_user(f"U{i}", "Test", f"u{i}@example.com")["id"] for i in range(501)]
    for user_id in users:
        emulator.create_membership(orgs[0], user_id)
        emulator.create_membership(orgs[1], user_id)

    result = run_full_sync()

    assert result.success
    assert len(live_orgs(engine)) == 1201
    assert len(members(engine)) == 1002
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(profiles)).scalar_one() == 501
    listings = [
        r for r in emulator.requests if r.path in ("/organizations", "/users", "/organization_memberships")
    ]
    assert listings and all(r.param("limit") in ("500", "1") for r in listings)
    pages = [r for r in listings if r.param("limit") == "500"]
    assert sorted({r.param("offset") for r in pages if r.path == "/organizations"}) == ["0", "1000", "500"]
    assert not [
        r
        for r in emulator.requests
        if r.path.endswith("/memberships") and r.path != "/organization_memberships"
    ]


def test_rate_limits_and_server_errors_are_retried(
    seeded: ClerkEmulator, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 429 with Retry-After and transient 5xx answers are retried; the sync completes."""
    seeded.inject_fault("/organizations", 429, times=1, retry_after=1, query={"offset": "0"})
    seeded.inject_fault("/organization_memberships", 503, times=2)
    seeded.inject_fault("/users", 500, times=1)

    result = run_full_sync()

    assert result.success
    assert len(live_orgs(engine)) == 5
    assert members(engine) == clerk_members(seeded)
    statuses = [r.status for r in seeded.requests]
    assert statuses.count(429) == 1 and statuses.count(503) == 2 and statuses.count(500) == 1


def test_refused_key_fails_at_once_without_writing_or_leaking_it(
    seeded: ClerkEmulator, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wrong secret key fails the run on the first request; the error says so; the key is nowhere."""
    wrong_key = "sk_test_wrong_key_that_must_not_leak_1234567890"
    monkeypatch.setenv("CLERK_SECRET_KEY", wrong_key)
    instance = dg.DagsterInstance.ephemeral()

    result = defs.resolve_job_def("clerk_full_sync").execute_in_process(
        instance=instance, raise_on_error=False
    )

    assert not result.success
    assert "refused" in failure_message(result).lower()
    # One request per asset that ran (memberships wait on the two that failed): no retries.
    assert [r.status for r in seeded.requests] == [401, 401]
    assert live_orgs(engine) == {}
    logs = "\n".join(str(record) for record in instance.all_logs(result.run_id))
    assert wrong_key not in logs


def test_unmapped_role_is_quarantined_while_the_rest_lands(seeded: ClerkEmulator, engine: Engine) -> None:
    """A custom role without a mapping goes to sync_quarantine with its reason; after mapping it in
    the sync_policy resource's role_map (ORGSYNC_ROLE_MAP) it lands and leaves the quarantine."""
    org_id = next(iter(seeded.organizations))
    billing_user = seeded.create_user("Bill", "Ing", "bill@example.com")["id"]
    billing = seeded.create_membership(org_id, billing_user, role="org:billing")

    result = run_full_sync()

    assert result.success
    everyone = clerk_members(seeded, {"org:admin": "admin", "org:member": "member", "org:billing": "member"})
    assert members(engine) == {m for m in everyone if m[1] != billing_user}
    with engine.connect() as conn:
        quarantined = conn.execute(sa.select(sync_quarantine)).all()
    assert [(q.entity, q.clerk_id) for q in quarantined] == [("membership", billing["id"])]
    assert "org:billing" in quarantined[0].reason and "ORGSYNC_ROLE_MAP" in quarantined[0].reason
    assert quarantined[0].payload["id"] == billing["id"]
    assert checks(result)[("organization_members", "no_quarantined_records")] is False
    assert metadata(result, "organization_members")["rows_quarantined"] == 1

    billing_mapped = SyncPolicyResource(role_map='{"org:billing": "member"}')
    result = run_full_sync(resources={"sync_policy": billing_mapped})

    assert result.success
    assert (org_id, billing_user, "member", "org:billing") in members(engine)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_quarantine)).scalar_one() == 0


def test_deletions_in_clerk_are_reconciled(seeded: ClerkEmulator, engine: Engine) -> None:
    """A deleted organization and user are soft-deleted with their memberships gone; a removed
    membership is deleted."""
    assert run_full_sync().success
    org_id = next(iter(seeded.organizations))
    user_id = next(
        m["public_user_data"]["user_id"]
        for m in seeded.memberships.values()
        if m["organization"]["id"] != org_id
    )
    seeded.delete_organization(org_id)
    seeded.delete_user(user_id)
    removed = next(iter(seeded.memberships.values()))
    seeded.delete_membership(removed["organization"]["id"], removed["public_user_data"]["user_id"])

    result = run_full_sync()

    assert result.success
    with engine.connect() as conn:
        deleted_orgs = (
            conn.execute(sa.select(organizations.c.id).where(organizations.c.deleted_at.is_not(None)))
            .scalars()
            .all()
        )
        deleted_users = (
            conn.execute(sa.select(profiles.c.id).where(profiles.c.deleted_at.is_not(None))).scalars().all()
        )
    assert deleted_orgs == [org_id]
    assert deleted_users == [user_id]
    assert members(engine) == clerk_members(seeded)
    assert metadata(result, "organizations")["rows_deleted"] == 1
    assert metadata(result, "profiles")["rows_deleted"] == 1
    assert metadata(result, "organization_members")["rows_deleted"] == 1


def test_partial_listing_fails_the_run_and_deletes_nothing(emulator: ClerkEmulator, engine: Engine) -> None:
    """When a page keeps failing after retries, the run fails and no row is deleted."""
    two_attempts = {"clerk": clerk_resource(max_attempts=2)}
    orgs = [emulator.create_organization(f"Org {i}")["id"] for i in range(502)]
    assert run_full_sync(resources=two_attempts).success
    emulator.delete_organization(orgs[0])
    emulator.inject_fault("/organizations", 500, times=-1, query={"offset": "500"})

    result = run_full_sync(resources=two_attempts)

    assert not result.success
    assert "organizations" in failure_message(result)
    assert len(live_orgs(engine)) == 502


def test_empty_instance_is_refused(seeded: ClerkEmulator, engine: Engine) -> None:
    """A listing that would delete more than ORGSYNC_MAX_DELETE_FRACTION fails, names the setting,
    and deletes nothing (a key pointing at the wrong, empty instance)."""
    assert run_full_sync().success
    for org_id in list(seeded.organizations):
        seeded.delete_organization(org_id)
    for user_id in list(seeded.users):
        seeded.delete_user(user_id)

    result = run_full_sync()

    assert not result.success
    assert "ORGSYNC_MAX_DELETE_FRACTION" in failure_message(result)
    assert len(live_orgs(engine)) == 5
    assert len(members(engine)) == 15
    with engine.connect() as conn:
        assert (
            conn.execute(sa.select(sa.func.count()).where(profiles.c.deleted_at.is_not(None))).scalar_one()
            == 0
        )


def test_run_config_raises_the_delete_limit_for_one_run(seeded: ClerkEmulator, engine: Engine) -> None:
    """The guard refuses deleting 3 of 5 organizations; one run launched with max_delete_fraction
    raised in its run config deletes them, and the next run is back to the configured limit."""
    assert run_full_sync().success
    for org_id in list(seeded.organizations)[:3]:
        seeded.delete_organization(org_id)
    assert not run_full_sync().success
    assert len(live_orgs(engine)) == 5

    raised = {"ops": {"organizations": {"config": {"max_delete_fraction": 0.6}}}}
    result = run_full_sync(run_config=raised, asset_selection=[dg.AssetKey("organizations")])

    assert result.success
    assert set(live_orgs(engine)) == set(seeded.organizations)
    assert metadata(result, "organizations")["dagster/row_count"] == 5


def test_member_missing_from_user_listing_gets_a_profile_and_is_kept(
    seeded: ClerkEmulator, engine: Engine
) -> None:
    """A member the /users listing misses gets a profile from public_user_data; the next sync keeps it,
    because a lookup by id shows the user still exists."""
    membership = next(iter(seeded.memberships.values()))
    hidden = membership["public_user_data"]
    seeded.hide_user_from_listing(hidden["user_id"])

    for _ in range(2):
        result = run_full_sync()
        assert result.success
        with engine.connect() as conn:
            profile = conn.execute(sa.select(profiles).where(profiles.c.id == hidden["user_id"])).one()
        assert (profile.email, profile.first_name, profile.last_name, profile.deleted_at) == (
            hidden["identifier"],
            hidden["first_name"],
            hidden["last_name"],
            None,
        )
        assert members(engine) == clerk_members(seeded)
    assert metadata(result, "profiles")["rows_deleted"] == 0


def test_row_shifted_out_of_the_pages_is_confirmed_before_deletion(
    emulator: ClerkEmulator, engine: Engine
) -> None:
    """An organization deleted mid-crawl shifts the next page so another one is never listed; the
    lookup by id shows that one still exists, so nothing is deleted; the next sync removes the
    deleted one only."""
    orgs = [emulator.create_organization(f"Org {i}")["id"] for i in range(502)]
    assert run_full_sync().success

    def delete_first_after_page_one(method: str, path: str, query: dict[str, str]) -> None:
        if path == "/organizations" and query.get("offset") == "500" and orgs[0] in emulator.organizations:
            emulator.delete_organization(orgs[0])

    emulator.add_request_hook(delete_first_after_page_one)
    result = run_full_sync()

    assert result.success
    assert metadata(result, "organizations")["rows_fetched"] == 501  # orgs[500] slid into page one's range
    assert metadata(result, "organizations")["rows_deleted"] == 0
    assert set(live_orgs(engine)) == set(orgs)

    result = run_full_sync()

    assert metadata(result, "organizations")["rows_deleted"] == 1
    assert set(live_orgs(engine)) == set(orgs[1:])


def test_rows_written_after_the_listing_began_are_not_deleted(
    emulator: ClerkEmulator, engine: Engine
) -> None:
    """A row written while the listing runs (as a webhook would) is not deleted, even though Clerk's
    listing and lookup do not know it."""
    emulator.seed_sample(organizations=10, users=3, memberships_per_org=1)

    def write_during_listing(method: str, path: str, query: dict[str, str]) -> None:
        if path == "/organizations" and query.get("offset") == "0":
            with engine.begin() as conn:
                apply.apply_organizations(
                    conn,
                    [OrganizationRow("org_writtenduringlisting", "Late", None, None, "{}", 10**12, 10**12)],
                )

    emulator.add_request_hook(write_during_listing)
    result = run_full_sync()

    assert result.success
    assert "org_writtenduringlisting" in live_orgs(engine)


@pytest.mark.parametrize("asset", ["organizations", "profiles", "organization_members"])
def test_each_asset_materializes_alone(seeded: ClerkEmulator, engine: Engine, asset: str) -> None:
    """Any one asset can be materialized by itself, as from the Dagster UI; memberships alone bring
    their organizations and user stubs, so no foreign key fails."""
    result = defs.resolve_job_def("clerk_full_sync").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), asset_selection=[dg.AssetKey(asset)], raise_on_error=False
    )

    assert result.success
    assert [e.asset_key.to_user_string() for e in result.get_asset_materialization_events()] == [asset]
    with engine.connect() as conn:
        count = conn.execute(sa.select(sa.func.count()).select_from(sa.table(asset))).scalar_one()
    assert count == {"organizations": 5, "profiles": 12, "organization_members": 15}[asset]
    if asset == "organization_members":
        assert members(engine) == clerk_members(seeded)


def test_materialization_metadata_and_checks(seeded: ClerkEmulator, engine: Engine) -> None:
    """Each materialization records fetched/inserted/updated/deleted/quarantined/duration; checks
    report quarantine and count parity."""
    result = run_full_sync()

    for asset in ("organizations", "profiles", "organization_members"):
        meta = metadata(result, asset)
        for key in ("rows_fetched", "rows_inserted", "rows_updated", "rows_deleted", "rows_quarantined"):
            assert isinstance(meta[key], int)
        assert meta["duration_seconds"] >= 0
    assert checks(result) == {
        (asset, check): True
        for asset in ("organizations", "profiles", "organization_members")
        for check in ("no_quarantined_records", "count_matches_clerk")
    }

    broken = seeded.create_organization("Broken Metadata")["id"]
    seeded.update_organization(broken, public_metadata=["not", "an", "object"])
    result = run_full_sync()

    assert result.success
    assert checks(result)[("organizations", "no_quarantined_records")] is False
    assert checks(result)[("organizations", "count_matches_clerk")] is False
    parity = next(e for e in result.get_asset_check_evaluations() if e.check_name == "count_matches_clerk")
    assert {key: value.value for key, value in parity.metadata.items()} == {
        "clerk": 6,
        "postgres": 5,
        "difference": -1,
    }
