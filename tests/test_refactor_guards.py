"""Guards for behaviours the README promises that no other test pinned down (issue 7, point 8).

Each test here was checked against a one-line change to the product that used to survive the suite:
the delete limit, the memberships guard, the membership deletion proof, the deletion time of an
event, the receiver's 400 for a payload the database refuses, the concurrent-writer re-check of the
merge, and the pruning of stale quarantine.
"""

import threading
import time
from datetime import UTC, datetime
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
from orgsync_pipeline.store.schema import organization_members, organizations, sync_quarantine, webhook_inbox
from tests.support import Receiver


def run_full_sync(resources: dict[str, Any] | None = None) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("clerk_full_sync").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False, resources=resources
    )


def apply_events() -> None:
    result = defs.resolve_job_def("clerk_webhook_apply").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )
    assert result.success


def failure_message(result: dg.ExecuteInProcessResult) -> str:
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert failures, "expected a failed step"
    return "\n".join(str(e.event_specific_data.error) for e in failures)


def live_org_ids(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(
            conn.execute(sa.select(organizations.c.id).where(organizations.c.deleted_at.is_(None))).scalars()
        )


def member_pairs(engine: Engine) -> set[tuple[str, str]]:
    with engine.connect() as conn:
        return {
            (row.organization_id, row.user_id)
            for row in conn.execute(
                sa.select(organization_members.c.organization_id, organization_members.c.user_id)
            )
        }


def quarantined(engine: Engine) -> list[tuple[str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(sync_quarantine.c.entity, sync_quarantine.c.clerk_id)).all()
    return sorted((row.entity, row.clerk_id) for row in rows)


# -- the delete limit ----------------------------------------------------------------------------


def test_the_configured_delete_share_is_the_limit(emulator: ClerkEmulator, engine: Engine) -> None:
    """With the sync_policy resource's max_delete_fraction at 0.4 (ORGSYNC_MAX_DELETE_FRACTION=0.4),
    deleting 3 of 10 organizations (over the default 20%) goes through; then deleting 3 of the 7 left
    (43%) is refused and deletes nothing."""
    policy = {"sync_policy": SyncPolicyResource(max_delete_fraction=0.4)}
    orgs = [emulator.create_organization(f"Org {i}")["id"] for i in range(10)]
    assert run_full_sync(policy).success

    for org_id in orgs[:3]:
        emulator.delete_organization(org_id)
    result = run_full_sync(policy)

    assert result.success
    assert live_org_ids(engine) == set(orgs[3:])

    for org_id in orgs[3:6]:
        emulator.delete_organization(org_id)
    result = run_full_sync(policy)

    assert not result.success
    assert "ORGSYNC_MAX_DELETE_FRACTION" in failure_message(result)
    assert live_org_ids(engine) == set(orgs[3:])


def test_deleting_a_large_share_of_memberships_alone_is_refused(
    emulator: ClerkEmulator, engine: Engine
) -> None:
    """5 of 15 memberships gone from Clerk, organizations and users unchanged: the memberships sync is
    refused by the delete limit (default 20%) and every membership row stays."""
    emulator.seed_sample(organizations=5, users=12, memberships_per_org=3)
    assert run_full_sync().success
    before = member_pairs(engine)
    assert len(before) == 15
    for membership in list(emulator.memberships.values())[:5]:
        emulator.delete_membership(
            membership["organization"]["id"], membership["public_user_data"]["user_id"]
        )

    result = run_full_sync()

    assert not result.success
    assert "organization_members" in failure_message(result)
    assert "ORGSYNC_MAX_DELETE_FRACTION" in failure_message(result)
    assert member_pairs(engine) == before


# -- the membership deletion proof ---------------------------------------------------------------


def test_a_membership_shifted_out_of_the_listing_is_kept(emulator: ClerkEmulator, engine: Engine) -> None:
    """A membership removed mid-crawl shifts the next page, so another membership is never listed;
    its user's lookup still lists that organization, so it is kept (and so is the removed one, which
    page one listed, until the next sync)."""
    orgs = [emulator.create_organization(f"Org {i}")["id"] for i in range(2)]
    users = [emulator.create_user(f"U{i}", "Test", f"u{i}@example.com")["id"] for i in range(251)]
    for user_id in users:
        for org_id in orgs:
            emulator.create_membership(org_id, user_id)
    assert run_full_sync().success
    listed = list(emulator.memberships.values())  # in creation order, as the listing pages them
    removed, skipped = listed[0], listed[500]
    removed_pair = (removed["organization"]["id"], removed["public_user_data"]["user_id"])
    skipped_pair = (skipped["organization"]["id"], skipped["public_user_data"]["user_id"])

    def remove_first_after_page_one(method: str, path: str, query: dict[str, str]) -> None:
        if (
            path == "/organization_memberships"
            and query.get("offset") == "500"
            and removed_pair
            in {
                (m["organization"]["id"], m["public_user_data"]["user_id"])
                for m in emulator.memberships.values()
            }
        ):
            emulator.delete_membership(*removed_pair)

    emulator.add_request_hook(remove_first_after_page_one)
    result = run_full_sync()

    assert result.success
    pairs = member_pairs(engine)
    assert skipped_pair in pairs
    assert len(pairs) == 502  # the removed one was listed on page one: the next sync removes it

    result = run_full_sync()

    assert result.success
    assert member_pairs(engine) == pairs - {removed_pair}


# -- the deletion time of an event ---------------------------------------------------------------


def test_a_deletion_is_dated_by_clerks_event_time_not_its_receipt(receiver: Receiver, engine: Engine) -> None:
    """An organization deleted in Clerk a minute ago, whose deletion arrives after an update made
    30 s ago: the update is newer than the deletion, so the organization stays; another deletion is
    stamped with its event's time, not the time it was received."""
    clerk = ClerkEmulator()
    kept = clerk.create_organization("Kept")
    gone = clerk.create_organization("Gone")
    now_ms = clerk.now_ms()
    deleted_at_ms = now_ms - 60_000
    update = {**kept, "name": "Updated after the deletion", "updated_at": now_ms - 30_000}
    for envelope in (
        clerk.event_envelope("organization.created", {**kept, "updated_at": now_ms - 120_000}),
        clerk.event_envelope("organization.created", {**gone, "updated_at": now_ms - 120_000}),
        clerk.event_envelope("organization.updated", update),
    ):
        assert receiver.post(envelope).status_code == 200
    apply_events()
    for envelope in (
        clerk.event_envelope(
            "organization.deleted", clerk.delete_organization(kept["id"]), timestamp_ms=deleted_at_ms
        ),
        clerk.event_envelope(
            "organization.deleted", clerk.delete_organization(gone["id"]), timestamp_ms=deleted_at_ms
        ),
    ):
        assert receiver.post(envelope).status_code == 200
    apply_events()

    with engine.connect() as conn:
        rows = {row.id: row for row in conn.execute(sa.select(organizations))}
    assert (rows[kept["id"]].name, rows[kept["id"]].deleted_at) == ("Updated after the deletion", None)
    assert rows[gone["id"]].deleted_at == datetime.fromtimestamp(deleted_at_ms / 1000, UTC)


# -- a payload the database refuses --------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        # jsonb cannot hold \\u0000; Python's json also reads NaN, which PostgreSQL's JSON does not.
        b'{"object":"event","type":"user.updated","timestamp":1716883200000,'
        b'"data":{"object":"user","id":"user_nul0","first_name":"a\\u0000b"}}',
        b'{"object":"event","type":"user.updated","timestamp":1716883200000,'
        b'"data":{"object":"user","id":"user_nan0","first_name":NaN}}',
    ],
    ids=["nul-character", "nan"],
)
def test_a_payload_the_database_refuses_is_a_4xx_every_time(
    receiver: Receiver, engine: Engine, body: bytes
) -> None:
    """A signed event that can never be stored is answered 4xx (Svix stops), on redelivery too,
    never 503 (which would have Svix retry it forever); nothing is stored. Whichever layer refuses
    it (the receiver's own checks or the database) the answer must be a 4xx."""
    for _delivery in range(2):
        response = receiver.post(body, msg_id="msg_refused_payload")
        assert 400 <= response.status_code < 500, (response.status_code, response.text)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(webhook_inbox)).scalar_one() == 0


def test_a_value_the_database_refuses_after_the_receivers_checks_is_a_400(
    receiver: Receiver, engine: Engine
) -> None:
    """The receiver's own checks refuse what jsonb cannot hold, so here the database refuses a value
    they let through (this test narrows the inbox's event_type column): still a 400 on every
    delivery, never the 503 that would have Svix retry it forever."""
    with engine.begin() as conn:
        conn.execute(sa.text("ALTER TABLE webhook_inbox ALTER COLUMN event_type TYPE varchar(20)"))
    envelope = ClerkEmulator().event_envelope("organization.updated_with_a_long_name", {"id": "org_x"})
    for _delivery in range(2):
        response = receiver.post(envelope, msg_id="msg_refused_by_the_database")
        assert response.status_code == 400, (response.status_code, response.text)
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(webhook_inbox)).scalar_one() == 0


# -- two writers at once -------------------------------------------------------------------------


T0_MS = 1_716_883_200_000


def org_row(name: str, updated_at: int) -> OrganizationRow:
    return OrganizationRow("org_concurrent1", name, None, None, "{}", T0_MS, updated_at)


def test_an_older_writer_waiting_on_the_row_lock_does_not_overwrite_the_newer(engine: Engine) -> None:
    """Two writers at once: the older one's merge passes its filter, then waits on the row the newer
    one has locked; once the newer commits, the older's ON CONFLICT re-check refuses it."""
    with engine.begin() as conn:
        apply.apply_organizations(conn, [org_row("Original", T0_MS)])

    newer = engine.connect()
    older = engine.connect()
    try:
        older_pid = older.execute(sa.select(sa.func.pg_backend_pid())).scalar_one()
        older.commit()
        newer.begin()
        apply.apply_organizations(newer, [org_row("Newer", T0_MS + 2_000)])  # holds the row lock

        errors: list[BaseException] = []

        def write_older() -> None:
            try:
                with older.begin():
                    apply.apply_organizations(older, [org_row("Older", T0_MS + 1_000)])
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)

        thread = threading.Thread(target=write_older, daemon=True)
        thread.start()
        _wait_until_waiting_on_a_lock(engine, older_pid)
        newer.commit()
        thread.join(timeout=60)
        assert not thread.is_alive() and errors == []
    finally:
        newer.close()
        older.close()

    with engine.connect() as conn:
        row = conn.execute(sa.select(organizations).where(organizations.c.id == "org_concurrent1")).one()
    assert row.name == "Newer"
    assert row.updated_at == datetime.fromtimestamp((T0_MS + 2_000) / 1000, UTC)


def _wait_until_waiting_on_a_lock(engine: Engine, pid: int) -> None:
    activity = sa.table("pg_stat_activity", sa.column("pid"), sa.column("wait_event_type"))
    deadline = time.monotonic() + 60
    with engine.connect() as conn:
        while time.monotonic() < deadline:
            waiting = conn.execute(
                sa.select(activity.c.wait_event_type).where(activity.c.pid == pid)
            ).scalar()
            conn.rollback()  # a fresh snapshot of pg_stat_activity each time
            if waiting == "Lock":
                return
            time.sleep(0.02)
    pytest.fail("the older writer never waited on the row lock")


# -- stale quarantine ----------------------------------------------------------------------------


def test_quarantined_records_gone_from_clerk_leave_the_quarantine(
    emulator: ClerkEmulator, engine: Engine
) -> None:
    """An organization and a membership quarantined by one sync, then removed from Clerk, are no
    longer quarantined after the next sync (the listing no longer has them)."""
    emulator.seed_sample(organizations=5, users=12, memberships_per_org=3)
    broken_org = emulator.create_organization("Broken Metadata")["id"]
    emulator.update_organization(broken_org, public_metadata=["not", "an", "object"])
    org_id = next(iter(emulator.organizations))
    billing_user = emulator.create_user("Bill", "Ing", "bill@example.com")["id"]
    billing = emulator.create_membership(org_id, billing_user, role="org:billing")
    assert run_full_sync().success
    assert quarantined(engine) == [("membership", billing["id"]), ("organization", broken_org)]

    emulator.delete_organization(broken_org)
    emulator.delete_membership(org_id, billing_user)
    assert run_full_sync().success

    assert quarantined(engine) == []
