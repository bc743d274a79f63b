"""Webhook events posted, signed, to the receiver over loopback HTTP, then applied by the real
`clerk_webhook_apply` job: every event type, duplicates, disorder, quarantine and failures."""

import time
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from orgsync_pipeline.clerk.emulator import ClerkEmulator
from orgsync_pipeline.definitions import defs
from orgsync_pipeline.events import apply_pending_events
from orgsync_pipeline.resources import WebhookApplyResource
from orgsync_pipeline.settings import load_settings
from orgsync_pipeline.store.locking import drain_lock_key
from orgsync_pipeline.store.schema import (
    organization_members,
    organizations,
    profiles,
    sync_quarantine,
    webhook_inbox,
)
from orgsync_pipeline.webhooks import create_app, serve_in_thread
from tests.support import Receiver
from tests.tcp_proxy import proxy_for


@pytest.fixture
def clerk() -> ClerkEmulator:
    """Clerk's state and event payloads (the emulator's Python API; no server needed)."""
    return ClerkEmulator()


def apply_events(resources: dict[str, Any] | None = None) -> dg.ExecuteInProcessResult:
    result = defs.resolve_job_def("clerk_webhook_apply").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False, resources=resources
    )
    assert result.success
    return result


def deliver(receiver: Receiver, clerk: ClerkEmulator, event_type: str, data: dict, **kwargs: Any) -> None:
    response = receiver.post(clerk.event_envelope(event_type, data, **kwargs))
    assert response.status_code == 200, response.text


def run_metadata(result: dg.ExecuteInProcessResult) -> dict[str, Any]:
    """The run's counts, recorded as an observation of the inbox."""
    (event,) = result.get_asset_observation_events()
    assert event.asset_key == dg.AssetKey("webhook_inbox")
    return {
        key: value.value for key, value in event.asset_observation_data.asset_observation.metadata.items()
    }


def org_row(engine: Engine, org_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.select(organizations).where(organizations.c.id == org_id)).one_or_none()


def profile_row(engine: Engine, user_id: str) -> Any:
    with engine.connect() as conn:
        return conn.execute(sa.select(profiles).where(profiles.c.id == user_id)).one_or_none()


def member_rows(engine: Engine) -> dict[tuple[str, str], Any]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(organization_members)).all()
    return {(row.organization_id, row.user_id): row for row in rows}


def inbox_statuses(engine: Engine) -> list[tuple[str, str]]:
    with engine.connect() as conn:
        return [
            tuple(row)
            for row in conn.execute(
                sa.select(webhook_inbox.c.event_type, webhook_inbox.c.status).order_by(webhook_inbox.c.id)
            )
        ]


def test_every_event_type_is_applied(receiver: Receiver, clerk: ClerkEmulator, engine: Engine) -> None:
    """Created, updated and deleted events of organizations, users and memberships reach the tables."""
    org = clerk.create_organization("Acme")
    user = clerk.create_user("Ada", "Lovelace", "ada@example.com")
    membership = clerk.create_membership(org["id"], user["id"], role="org:member")
    for event_type, data in (
        ("organization.created", org),
        ("user.created", user),
        ("organizationMembership.created", membership),
    ):
        deliver(receiver, clerk, event_type, data)
    apply_events()
    assert org_row(engine, org["id"]).name == "Acme"
    assert profile_row(engine, user["id"]).email == "ada@example.com"
    assert member_rows(engine)[(org["id"], user["id"])].role == "member"

    deliver(receiver, clerk, "organization.updated", clerk.update_organization(org["id"], name="Acme Ltd"))
    deliver(receiver, clerk, "user.updated", clerk.update_user(user["id"], first_name="Augusta"))
    updated = clerk.update_membership(org["id"], user["id"], role="org:admin")
    deliver(receiver, clerk, "organizationMembership.updated", updated)
    apply_events()
    assert org_row(engine, org["id"]).name == "Acme Ltd"
    assert profile_row(engine, user["id"]).first_name == "Augusta"
    member = member_rows(engine)[(org["id"], user["id"])]
    assert (member.role, member.clerk_role) == ("admin", "org:admin")

    deliver(receiver, clerk, "organizationMembership.deleted", clerk.delete_membership(org["id"], user["id"]))
    apply_events()
    assert member_rows(engine) == {}

    deliver(receiver, clerk, "user.deleted", clerk.delete_user(user["id"]))
    deliver(receiver, clerk, "organization.deleted", clerk.delete_organization(org["id"]))
    apply_events()
    assert org_row(engine, org["id"]).deleted_at is not None
    assert profile_row(engine, user["id"]).deleted_at is not None
    assert {status for _, status in inbox_statuses(engine)} == {"applied"}


def test_deleting_an_organization_or_user_removes_their_memberships(
    receiver: Receiver, clerk: ClerkEmulator, engine: Engine
) -> None:
    """organization.deleted and user.deleted soft-delete the row and delete its memberships."""
    org, other_org = clerk.create_organization("Acme"), clerk.create_organization("Globex")
    ada, bob = (
        clerk.create_user("Ada", "L", "ada@example.com"),
        clerk.create_user("Bob", "M", "bob@example.com"),
    )
    for org_id, user_id in ((org["id"], ada["id"]), (org["id"], bob["id"]), (other_org["id"], bob["id"])):
        deliver(receiver, clerk, "organizationMembership.created", clerk.create_membership(org_id, user_id))
    apply_events()
    assert len(member_rows(engine)) == 3

    deliver(receiver, clerk, "organization.deleted", clerk.delete_organization(org["id"]))
    deliver(receiver, clerk, "user.deleted", clerk.delete_user(bob["id"]))
    apply_events()

    assert member_rows(engine) == {}
    assert org_row(engine, org["id"]).deleted_at is not None
    assert org_row(engine, other_org["id"]).deleted_at is None
    assert profile_row(engine, bob["id"]).deleted_at is not None
    assert profile_row(engine, ada["id"]).deleted_at is None


def test_the_same_event_twice_changes_nothing_the_second_time(
    receiver: Receiver, clerk: ClerkEmulator, engine: Engine
) -> None:
    """A redelivery (same svix-id) is stored once; a replay (new svix-id) applies without writing."""
    org = clerk.create_organization("Acme")
    envelope = clerk.event_envelope("organization.created", org)
    assert receiver.post(envelope, msg_id="msg_once").json()["status"] == "stored"
    assert receiver.post(envelope, msg_id="msg_once").json()["status"] == "duplicate"
    apply_events()
    written = org_row(engine, org["id"]).synced_at

    assert receiver.post(envelope, msg_id="msg_replayed_from_dashboard").json()["status"] == "stored"
    apply_events()

    assert org_row(engine, org["id"]).synced_at == written
    assert inbox_statuses(engine) == [("organization.created", "applied")] * 2


def test_an_older_update_after_a_newer_one_changes_nothing(
    receiver: Receiver, clerk: ClerkEmulator, engine: Engine
) -> None:
    """Newer wins on updated_at, whatever order the events arrive in (and within one batch)."""
    org = clerk.create_organization("Acme")
    old = clerk.update_organization(org["id"], name="Old name")
    new = clerk.update_organization(org["id"], name="New name")
    user = clerk.create_user("Ada", "L", "old@example.com")
    old_user = clerk.update_user(user["id"], email="older@example.com")
    new_user = clerk.update_user(user["id"], email="newer@example.com")

    deliver(receiver, clerk, "organization.updated", new)
    apply_events()
    deliver(receiver, clerk, "organization.updated", old)
    deliver(receiver, clerk, "user.updated", new_user)
    deliver(receiver, clerk, "user.updated", old_user)
    apply_events()

    assert org_row(engine, org["id"]).name == "New name"
    assert profile_row(engine, user["id"]).email == "newer@example.com"


def test_an_update_older_than_a_delete_does_not_bring_the_row_back(
    receiver: Receiver, clerk: ClerkEmulator, engine: Engine
) -> None:
    """A delete is final for what came before it, including rows never seen before the delete."""
    org = clerk.create_organization("Acme")
    user = clerk.create_user("Ada", "L", "ada@example.com")
    deliver(receiver, clerk, "organization.created", org)
    apply_events()
    org_update = clerk.update_organization(org["id"], name="Renamed just before deletion")
    user_created = clerk.get_user(user["id"])

    deliver(receiver, clerk, "organization.deleted", clerk.delete_organization(org["id"]))
    deliver(receiver, clerk, "user.deleted", clerk.delete_user(user["id"]))
    apply_events()
    deliver(receiver, clerk, "organization.updated", org_update)
    deliver(receiver, clerk, "user.created", user_created)  # arrives after its deletion, never seen before
    apply_events()

    assert org_row(engine, org["id"]).deleted_at is not None
    assert org_row(engine, org["id"]).name == "Acme"
    assert profile_row(engine, user["id"]).deleted_at is not None


def test_a_membership_before_its_organization_and_user_still_lands(
    receiver: Receiver, clerk: ClerkEmulator, engine: Engine
) -> None:
    """organizationMembership.created first: its organization and a profile stub are written first;
    the user's own event later fills in the profile."""
    org = clerk.create_organization("Acme")
    user = clerk.create_user("Ada", "Lovelace", "ada@example.com")
    membership = clerk.create_membership(org["id"], user["id"], role="org:admin")

    deliver(receiver, clerk, "organizationMembership.created", membership)
    apply_events()
    assert member_rows(engine)[(org["id"], user["id"])].role == "admin"
    assert org_row(engine, org["id"]).name == "Acme"
    stub = profile_row(engine, user["id"])
    assert (stub.email, stub.first_name, stub.updated_at) == ("ada@example.com", "Ada", None)

    deliver(receiver, clerk, "user.created", clerk.update_user(user["id"], last_name="King"))
    deliver(receiver, clerk, "organization.created", org)
    apply_events()
    assert profile_row(engine, user["id"]).last_name == "King"
    assert profile_row(engine, user["id"]).updated_at is not None


def test_a_user_who_rejoins_lands_but_the_old_membership_stays_deleted(
    receiver: Receiver, clerk: ClerkEmulator, engine: Engine
) -> None:
    """A late update of a deleted membership is refused; the membership created after the deletion lands."""
    org = clerk.create_organization("Acme")
    user = clerk.create_user("Ada", "L", "ada@example.com")
    first = clerk.create_membership(org["id"], user["id"], role="org:member")
    late_update = clerk.update_membership(org["id"], user["id"], role="org:admin")
    deliver(receiver, clerk, "organizationMembership.created", first)
    deliver(receiver, clerk, "organizationMembership.deleted", clerk.delete_membership(org["id"], user["id"]))
    apply_events()
    deliver(receiver, clerk, "organizationMembership.updated", late_update)
    apply_events()
    assert member_rows(engine) == {}

    rejoined = clerk.create_membership(org["id"], user["id"], role="org:member")
    deliver(receiver, clerk, "organizationMembership.created", rejoined)
    apply_events()

    member = member_rows(engine)[(org["id"], user["id"])]
    assert member.clerk_membership_id == rejoined["id"] != first["id"]


def test_disorder_within_one_batch(receiver: Receiver, clerk: ClerkEmulator, engine: Engine) -> None:
    """Delete before create, update before create, all in one run: the end state is Clerk's."""
    org = clerk.create_organization("Acme")
    user = clerk.create_user("Ada", "L", "ada@example.com")
    membership = clerk.create_membership(org["id"], user["id"])
    renamed = clerk.update_organization(org["id"], name="Acme Ltd")
    removed = clerk.delete_membership(org["id"], user["id"])
    events = [
        ("organizationMembership.deleted", removed),
        ("organization.updated", renamed),
        ("organizationMembership.created", membership),
        ("organization.created", org),
        ("user.created", user),
    ]
    for event_type, data in events:
        deliver(receiver, clerk, event_type, data)
    apply_events()

    assert org_row(engine, org["id"]).name == "Acme Ltd"
    assert member_rows(engine) == {}
    assert profile_row(engine, user["id"]).email == "ada@example.com"


def test_invalid_payloads_are_quarantined(receiver: Receiver, clerk: ClerkEmulator, engine: Engine) -> None:
    """An invalid record goes to sync_quarantine with its reason; the event is marked ignored with it."""
    org = clerk.create_organization("Acme")
    user = clerk.create_user("Ada", "L", "ada@example.com")
    billing = clerk.create_membership(org["id"], user["id"], role="org:billing")
    broken = {**org, "created_at": 1716883200}  # seconds, not milliseconds
    deliver(receiver, clerk, "organization.updated", broken)
    deliver(receiver, clerk, "organizationMembership.created", billing)

    result = apply_events()

    with engine.connect() as conn:
        quarantined = {row.entity: row for row in conn.execute(sa.select(sync_quarantine))}
        notes = conn.execute(sa.select(webhook_inbox.c.status, webhook_inbox.c.last_error)).all()
    assert "created_at" in quarantined["organization"].reason
    assert quarantined["organization"].source == "webhook"
    assert "org:billing" in quarantined["membership"].reason
    assert member_rows(engine) == {}
    assert all(status == "ignored" and note.startswith("quarantined") for status, note in notes)
    assert run_metadata(result)["records_quarantined"] == 2


def test_a_batch_lands_the_newest_payload_and_quarantines_only_the_bad_event(
    receiver: Receiver, clerk: ClerkEmulator, engine: Engine
) -> None:
    """Sixty events merged as one batch: of three versions of one organization the newest lands
    whatever the order, one invalid organization is quarantined alone, the rest land."""
    orgs = [clerk.create_organization(f"Org {i}") for i in range(55)]
    first = orgs[0]
    second = clerk.update_organization(first["id"], name="Org 0 renamed")
    third = clerk.update_organization(first["id"], name="Org 0 final")
    broken = {**clerk.create_organization("Broken"), "created_at": 1716883200}  # seconds, not ms
    for data in [third, *orgs[1:], broken, first, second]:
        deliver(receiver, clerk, "organization.updated", data)

    apply_events()

    assert org_row(engine, first["id"]).name == "Org 0 final"
    assert all(org_row(engine, org["id"]) is not None for org in orgs)
    assert org_row(engine, broken["id"]) is None
    statuses = [status for _, status in inbox_statuses(engine)]
    assert statuses.count("applied") == 57 and statuses.count("ignored") == 1


def test_a_transient_failure_is_retried_then_dead_and_fails_the_check(
    receiver: Receiver,
    clerk: ClerkEmulator,
    engine: Engine,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An event that fails for a reason that may pass (here a lock timeout: another transaction holds
    the organizations table) is kept with its error, retried after a backoff, and dead after the
    webhook_apply resource's max_attempts; the other events of its batch land; the dead one fails a
    check."""
    two_attempts = {"webhook_apply": WebhookApplyResource(max_attempts=2)}
    url = sa.make_url(database_url)
    options = f"{url.query['options']} -clock_timeout=200"
    monkeypatch.setenv("DATABASE_URL", url.update_query_dict({"options": options}).render_as_string(False))
    org = clerk.create_organization("Acme")
    user = clerk.create_user("Ada", "Lovelace", "ada@example.com")
    deliver(receiver, clerk, "organization.created", org)
    deliver(receiver, clerk, "user.created", user)

    with engine.connect() as holder:
        holder.execute(sa.text("LOCK TABLE organizations IN SHARE MODE"))
        result = apply_events(two_attempts)

        assert profile_row(engine, user["id"]) is not None
        with engine.connect() as conn:
            failed = conn.execute(sa.select(webhook_inbox).where(webhook_inbox.c.status != "applied")).one()
        assert (failed.event_type, failed.status, failed.attempts) == ("organization.created", "failed", 1)
        assert "lock timeout" in failed.last_error
        assert failed.next_attempt_at > failed.received_at
        assert (run_metadata(result)["events_failed"], run_metadata(result)["events_applied"]) == (1, 1)

        apply_events(two_attempts)  # the backoff has not passed: nothing to retry yet
        with engine.connect() as conn:
            attempts = conn.execute(
                sa.select(webhook_inbox.c.attempts).where(webhook_inbox.c.id == failed.id)
            )
            assert attempts.scalar() == 1
        with engine.begin() as conn:
            conn.execute(sa.update(webhook_inbox).values(next_attempt_at=sa.func.now()))
        result = apply_events(two_attempts)
        holder.rollback()

    with engine.connect() as conn:
        status = conn.execute(sa.select(webhook_inbox.c.status).where(webhook_inbox.c.id == failed.id))
        assert status.scalar() == "dead"
    assert org_row(engine, org["id"]) is None
    (check,) = result.get_asset_check_evaluations()
    assert (check.check_name, check.passed) == ("no_dead_events", False)
    assert run_metadata(result)["events_dead"] == 1


def test_event_timestamps_in_seconds_date_a_deletion(
    receiver: Receiver, clerk: ClerkEmulator, engine: Engine
) -> None:
    """An envelope timestamp in seconds is read as seconds: an update from before the deletion stays
    refused, one from after it wins."""
    org = clerk.create_organization("Acme")
    deleted_at_ms = clerk.now_ms() + 5_000
    stale = {**org, "name": "Stale", "updated_at": deleted_at_ms - 60_000}
    later = {**org, "name": "Back", "updated_at": deleted_at_ms + 60_000}
    deleted = clerk.delete_organization(org["id"])
    deliver(receiver, clerk, "organization.deleted", deleted, timestamp_ms=deleted_at_ms // 1000)
    deliver(receiver, clerk, "organization.updated", stale)
    apply_events()
    assert org_row(engine, org["id"]).deleted_at is not None

    deliver(receiver, clerk, "organization.updated", later)
    apply_events()

    row = org_row(engine, org["id"])
    assert (row.name, row.deleted_at) == ("Back", None)


def test_run_metadata_reports_counts_and_lag(
    receiver: Receiver, clerk: ClerkEmulator, engine: Engine
) -> None:
    """The apply run records events applied, ignored and failed, and the lag from receipt to apply."""
    for i in range(3):
        deliver(receiver, clerk, "organization.created", clerk.create_organization(f"Org {i}"))
    deliver(receiver, clerk, "session.created", {"object": "session", "id": "sess_1"})

    metadata = run_metadata(apply_events())

    assert (metadata["events_applied"], metadata["events_ignored"], metadata["events_failed"]) == (3, 0, 0)
    assert 0 <= metadata["lag_seconds_p50"] <= metadata["lag_seconds_p95"] <= metadata["lag_seconds_max"] < 60
    assert ("session.created", "ignored") in inbox_statuses(engine)


def test_only_one_drain_at_a_time(receiver: Receiver, clerk: ClerkEmulator, engine: Engine) -> None:
    """While another apply holds the inbox lock, a second one does nothing (and says so)."""
    deliver(receiver, clerk, "organization.created", clerk.create_organization("Acme"))
    with engine.connect() as holder:
        holder.execute(sa.select(sa.func.pg_advisory_lock(*drain_lock_key())))
        report = apply_pending_events(engine, load_settings(), dg.get_dagster_logger())
        holder.execute(sa.select(sa.func.pg_advisory_unlock(*drain_lock_key())))
    assert report.skipped_reason
    assert inbox_statuses(engine) == [("organization.created", "pending")]


def test_events_sent_while_the_database_is_down_are_all_applied_once_it_is_back(
    engine: Engine, database_url: str, webhook_secret: str
) -> None:
    """The emulator delivers like Svix (retrying on non-2xx, same svix-id); the receiver's database sits
    behind a proxy that goes down: deliveries get 503, are retried, and once the database is back every
    change is stored once and applied."""
    proxy, proxied_url = proxy_for(database_url)
    settings = load_settings(
        {
            "DATABASE_URL": proxied_url,
            "CLERK_WEBHOOK_SECRET": webhook_secret,
            "ORGSYNC_WEBHOOK_APPLY": "sensor",
        }
    )
    clerk = ClerkEmulator()
    try:
        with serve_in_thread(create_app(settings)) as receiver_url:
            clerk.add_webhook_endpoint(
                f"{receiver_url}/webhooks/clerk", webhook_secret, retry_delays=[0.5] * 20
            )
            org = clerk.create_organization("Acme")
            assert clerk.wait_for_deliveries(timeout=10)

            proxy.down()
            user = clerk.create_user("Ada", "Lovelace", "ada@example.com")
            clerk.create_membership(org["id"], user["id"], role="org:admin")
            clerk.update_organization(org["id"], name="Acme Ltd")
            time.sleep(2)
            refused = [d for d in clerk.deliveries if d.status_code == 503]
            proxy.up()
            assert clerk.wait_for_deliveries(timeout=30)
    finally:
        proxy.down()
        clerk.stop()

    assert refused, "the receiver answered 503 while its database was down"
    assert not clerk.failed_deliveries
    with engine.connect() as conn:
        stored = conn.execute(sa.select(webhook_inbox.c.svix_id)).scalars().all()
    assert len(stored) == len(set(stored)) == 4
    apply_events()
    assert org_row(engine, org["id"]).name == "Acme Ltd"
    assert member_rows(engine)[(org["id"], user["id"])].role == "admin"
    assert profile_row(engine, user["id"]).email == "ada@example.com"
    assert {status for _, status in inbox_statuses(engine)} == {"applied"}
