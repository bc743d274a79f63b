"""Guards found by mutation testing (mutmut 3.8.1 over events.py, webhooks.py, store/apply.py and
sync.py): each test here fails on a one-line change to the product that the rest of the suite let
through. Everything goes through the real parts: events are posted, signed, to the receiver over
loopback HTTP and applied by the real drain into the test's PostgreSQL schema.
"""

import base64
import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from orgsync_pipeline.clerk.emulator import ClerkEmulator, svix_headers
from orgsync_pipeline.events import EventOutcome, apply_event, apply_pending_events
from orgsync_pipeline.rows import Entity, MembershipKey, MembershipRow, OrganizationRow, QuarantinedRecord
from orgsync_pipeline.settings import Secret, SettingsError, load_settings
from orgsync_pipeline.store import apply
from orgsync_pipeline.store.inbox import InboxStatus
from orgsync_pipeline.store.schema import (
    membership_tombstones,
    organization_members,
    organizations,
    sync_quarantine,
    webhook_inbox,
)
from orgsync_pipeline.store.write_log import write_log
from orgsync_pipeline.validation import validate_organizations, validate_profiles
from orgsync_pipeline.webhooks import MAX_BODY_BYTES, create_app, serve_in_thread
from tests.support import Receiver

log = logging.getLogger(__name__)


@pytest.fixture
def clerk() -> ClerkEmulator:
    """Clerk's state and event payloads (the emulator's Python API; no server needed)."""
    return ClerkEmulator()


def deliver(receiver: Receiver, clerk: ClerkEmulator, event_type: str, data: Any, **kwargs: Any) -> None:
    response = receiver.post(clerk.event_envelope(event_type, data, **kwargs))
    assert response.status_code == 200, response.text


def drain(engine: Engine) -> None:
    """Apply every pending event as the inline worker does, logging writes under the webhook path."""
    apply_pending_events(engine, load_settings(), log, write_path="webhook")


def inbox(engine: Engine) -> list[tuple[str, str, str | None]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                webhook_inbox.c.event_type, webhook_inbox.c.status, webhook_inbox.c.last_error
            ).order_by(webhook_inbox.c.id)
        ).all()
    return [tuple(row) for row in rows]


def tombstones(engine: Engine) -> list[Any]:
    with engine.connect() as conn:
        return conn.execute(sa.select(membership_tombstones)).all()


def members(engine: Engine) -> dict[tuple[str, str], Any]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(organization_members)).all()
    return {(row.organization_id, row.user_id): row for row in rows}


def logged_writes(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(write_log.c.table_name, write_log.c.rows)).all()
    totals: dict[str, int] = {}
    for table, count in rows:
        totals[table] = totals.get(table, 0) + count
    return totals


def ms(value: int) -> datetime:
    return datetime.fromtimestamp(value / 1000, UTC)


def a_membership(receiver: Receiver, clerk: ClerkEmulator, engine: Engine) -> dict[str, Any]:
    """An organization, a user and a membership of the user in it, all applied."""
    org = clerk.create_organization("Acme")
    user = clerk.create_user("Ada", "Lovelace", "ada@example.com")
    deliver(receiver, clerk, "organization.created", org)
    deliver(receiver, clerk, "user.created", user)
    membership = clerk.create_membership(org["id"], user["id"])
    deliver(receiver, clerk, "organizationMembership.created", membership)
    drain(engine)
    assert set(members(engine)) == {(org["id"], user["id"])}
    return membership


# -- events.py: deletion events ------------------------------------------------------------------


def test_a_membership_deletion_leaves_a_tombstone_with_the_membership_id(
    receiver: Receiver, clerk: ClerkEmulator, engine: Engine
) -> None:
    """The tombstone of a deleted membership keeps Clerk's membership id; a deletion payload without
    an id still applies (its tombstone has no id)."""
    membership = a_membership(receiver, clerk, engine)
    org_id, user_id = membership["organization"]["id"], membership["public_user_data"]["user_id"]
    deliver(receiver, clerk, "organizationMembership.deleted", clerk.delete_membership(org_id, user_id))
    unseen = {**membership, "organization": {**membership["organization"], "id": "org_neverseen"}}
    del unseen["id"]
    deliver(receiver, clerk, "organizationMembership.deleted", unseen)
    drain(engine)

    assert members(engine) == {}
    assert sorted((t.organization_id, t.clerk_membership_id) for t in tombstones(engine)) == sorted(
        [(org_id, membership["id"]), ("org_neverseen", None)]
    )
    assert [status for _type, status, _error in inbox(engine)][-2:] == ["applied", "applied"]


@pytest.mark.parametrize(
    ("field", "bad_value"),
    [("membership_id", "orgmem-bad!"), ("organization_id", "acme"), ("user_id", "ada")],
)
def test_a_membership_deletion_with_a_malformed_id_is_quarantined_and_deletes_nothing(
    receiver: Receiver, clerk: ClerkEmulator, engine: Engine, field: str, bad_value: str
) -> None:
    """A membership.deleted whose id, organization.id or user_id is a string of the wrong shape is
    quarantined with a reason naming the value; the membership stays and no tombstone is left."""
    membership = a_membership(receiver, clerk, engine)
    payload = {
        **membership,
        "organization": {**membership["organization"]},
        "public_user_data": {**membership["public_user_data"]},
    }
    if field == "membership_id":
        payload["id"] = bad_value
    elif field == "organization_id":
        payload["organization"]["id"] = bad_value
    else:
        payload["public_user_data"]["user_id"] = bad_value
    deliver(receiver, clerk, "organizationMembership.deleted", payload)
    drain(engine)

    event_type, status, error = inbox(engine)[-1]
    assert (event_type, status) == ("organizationMembership.deleted", "quarantined")
    assert error is not None and repr(bad_value) in error
    assert len(members(engine)) == 1
    assert tombstones(engine) == []


@pytest.mark.parametrize("event_type", ["organization.deleted", "user.deleted"])
def test_a_deletion_with_a_malformed_id_is_quarantined_naming_the_id(
    receiver: Receiver, clerk: ClerkEmulator, engine: Engine, event_type: str
) -> None:
    """organization.deleted / user.deleted whose id is a string of the wrong shape: quarantined, with
    the id in the reason, and nothing is written."""
    deliver(
        receiver, clerk, event_type, {"object": event_type.split(".")[0], "id": "not-an-id", "deleted": True}
    )
    drain(engine)

    ((_type, status, error),) = inbox(engine)
    assert status == "quarantined"
    assert error is not None and "'not-an-id'" in error
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(organizations)).scalar_one() == 0


def test_a_membership_deletion_older_than_the_payload_is_dated_by_the_payload(
    receiver: Receiver, clerk: ClerkEmulator, engine: Engine
) -> None:
    """A membership.deleted whose envelope timestamp is older than the membership's own updated_at
    (clock skew): the deletion is at least as new as the payload, so the row goes and the tombstone
    is dated by the payload's updated_at."""
    membership = a_membership(receiver, clerk, engine)
    org_id, user_id = membership["organization"]["id"], membership["public_user_data"]["user_id"]
    removed = clerk.delete_membership(org_id, user_id)
    deliver(
        receiver,
        clerk,
        "organizationMembership.deleted",
        removed,
        timestamp_ms=removed["updated_at"] - 10_000,
    )
    drain(engine)

    assert members(engine) == {}
    (tombstone,) = tombstones(engine)
    assert tombstone.deleted_at == ms(removed["updated_at"])


def test_an_organization_deleted_before_it_was_seen_is_not_created_by_an_older_event(
    receiver: Receiver, clerk: ClerkEmulator, engine: Engine
) -> None:
    """organization.deleted arrives before the organization's (older) created event: a deleted
    placeholder is kept, so the late created event does not bring it to life."""
    org = clerk.create_organization("Late")
    deleted = clerk.delete_organization(org["id"])
    deliver(receiver, clerk, "organization.deleted", deleted)
    drain(engine)
    deliver(receiver, clerk, "organization.created", org)
    drain(engine)

    with engine.connect() as conn:
        row = conn.execute(sa.select(organizations).where(organizations.c.id == org["id"])).one()
    assert row.deleted_at is not None


def test_deletion_events_log_their_writes_per_table(
    receiver: Receiver, clerk: ClerkEmulator, engine: Engine
) -> None:
    """The write log (what the sensor reports to Dagster) counts the rows each deletion wrote, under
    the table it wrote."""
    membership = a_membership(receiver, clerk, engine)
    org_id, user_id = membership["organization"]["id"], membership["public_user_data"]["user_id"]
    before = logged_writes(engine)
    deliver(receiver, clerk, "organizationMembership.deleted", clerk.delete_membership(org_id, user_id))
    drain(engine)
    deliver(receiver, clerk, "user.deleted", clerk.delete_user(user_id))
    drain(engine)
    deliver(receiver, clerk, "organization.deleted", clerk.delete_organization(org_id))
    drain(engine)

    after = logged_writes(engine)
    assert {table: after.get(table, 0) - before.get(table, 0) for table in after} == {
        "organizations": 1,
        "profiles": 1,
        "organization_members": 1,
    }


# -- events.py: apply_event, the per-event path --------------------------------------------------


def apply_one(engine: Engine, clerk: ClerkEmulator, event_type: str, data: Any) -> EventOutcome:
    """``apply_event`` on one event, in its own transaction (the drain's per-event fallback path)."""
    with engine.begin() as conn:
        return apply_event(
            conn,
            event_type,
            clerk.event_envelope(event_type, data),
            occurred_at=datetime.now(UTC),
            role_map=load_settings().role_map,
        )


def quarantine_rows(engine: Engine) -> list[tuple[str, str | None, str]]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(sync_quarantine.c.entity, sync_quarantine.c.clerk_id, sync_quarantine.c.source)
        ).all()
    return sorted(tuple(row) for row in rows)


def test_apply_event_outcomes_for_each_family(clerk: ClerkEmulator, engine: Engine) -> None:
    """Each family applied one event at a time: what lands, what is quarantined (as a webhook
    record), and the outcome's status, note and per-table counts."""
    org = clerk.create_organization("Acme")
    user = clerk.create_user("Ada", "Lovelace", "ada@example.com")

    assert apply_one(engine, clerk, "organization.created", org) == EventOutcome(
        InboxStatus.APPLIED, written={"organizations": 1}
    )
    renamed = clerk.update_organization(org["id"], name="Acme Renamed")
    assert apply_one(engine, clerk, "organization.updated", renamed) == EventOutcome(
        InboxStatus.APPLIED, written={"organizations": 1}
    )
    assert apply_one(engine, clerk, "user.created", user) == EventOutcome(
        InboxStatus.APPLIED, written={"profiles": 1}
    )
    renamed_user = clerk.update_user(user["id"], first_name="Augusta")
    assert apply_one(engine, clerk, "user.updated", renamed_user) == EventOutcome(
        InboxStatus.APPLIED, written={"profiles": 1}
    )
    membership = clerk.create_membership(org["id"], user["id"])
    assert apply_one(engine, clerk, "organizationMembership.created", membership) == EventOutcome(
        InboxStatus.APPLIED, None, 0, {"organizations": 0, "profiles": 0, "organization_members": 1}
    )
    assert set(members(engine)) == {(org["id"], user["id"])}

    bad_org = {**clerk.create_organization("Broken"), "public_metadata": ["not", "an", "object"]}
    outcome = apply_one(engine, clerk, "organization.updated", bad_org)
    assert (outcome.status, outcome.quarantined) == (InboxStatus.IGNORED, 1)
    assert outcome.note is not None and outcome.note.startswith("quarantined: ")
    bad_user = {**clerk.create_user("Bad", "User", "bad@example.com"), "created_at": "yesterday"}
    outcome = apply_one(engine, clerk, "user.updated", bad_user)
    assert (outcome.status, outcome.quarantined) == (InboxStatus.IGNORED, 1)
    assert outcome.note is not None and outcome.note.startswith("quarantined: ")
    bad_membership = {**clerk.create_membership(org["id"], bad_user["id"]), "created_at": "yesterday"}
    outcome = apply_one(engine, clerk, "organizationMembership.updated", bad_membership)
    assert (outcome.status, outcome.quarantined) == (InboxStatus.IGNORED, 1)
    assert outcome.note is not None and outcome.note.startswith("quarantined: ")

    assert quarantine_rows(engine) == sorted(
        [
            ("organization", bad_org["id"], "webhook"),
            ("profile", bad_user["id"], "webhook"),
            ("membership", bad_membership["id"], "webhook"),
        ]
    )
    assert apply_one(engine, clerk, "session.created", {"id": "sess_1"}) == EventOutcome(
        InboxStatus.IGNORED, "orgsync does not handle session.created events"
    )


def test_a_membership_of_an_unusable_unknown_organization_is_ignored_with_its_counts(
    clerk: ClerkEmulator, engine: Engine
) -> None:
    """A membership whose embedded organization fails validation and is not stored: ignored, one
    record quarantined, and the user stub it wrote is still counted."""
    org = clerk.create_organization("Broken")
    user = clerk.create_user("Ada", "Lovelace", "ada@example.com")
    membership = clerk.create_membership(org["id"], user["id"])
    membership["organization"]["public_metadata"] = ["not", "an", "object"]

    outcome = apply_one(engine, clerk, "organizationMembership.created", membership)

    assert outcome == EventOutcome(
        InboxStatus.IGNORED,
        "quarantined: the membership's organization does not exist",
        1,
        {"organizations": 0, "profiles": 1, "organization_members": 0},
    )
    assert members(engine) == {}


def test_when_the_batch_merge_fails_each_event_applies_alone_with_the_drivers_error(
    receiver: Receiver, clerk: ClerkEmulator, engine: Engine
) -> None:
    """Two organizations the database refuses (a CHECK this test adds) and a membership in one
    batch: the set-based merge fails, so each event is applied alone. The membership lands (with
    the configured role map); each refused organization is quarantined with the driver's own
    message, not SQLAlchemy's statement dump, and the run counts both."""
    org = clerk.create_organization("Acme")
    user = clerk.create_user("Ada", "Lovelace", "ada@example.com")
    deliver(receiver, clerk, "organization.created", org)
    deliver(receiver, clerk, "user.created", user)
    drain(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.text("ALTER TABLE organizations ADD CONSTRAINT no_forbidden CHECK (name <> 'Forbidden')")
        )
    refused = [clerk.create_organization("Forbidden") for _ in range(2)]
    for forbidden in refused:
        deliver(receiver, clerk, "organization.created", forbidden)
    deliver(receiver, clerk, "organizationMembership.created", clerk.create_membership(org["id"], user["id"]))

    report = apply_pending_events(engine, load_settings(), log, write_path="webhook")

    assert set(members(engine)) == {(org["id"], user["id"])}
    statuses = inbox(engine)[2:]
    assert [status for _type, status, _error in statuses] == ["quarantined", "quarantined", "applied"]
    for _type, _status, error in statuses[:2]:
        assert error is not None and error.startswith("cannot apply: CheckViolation: ")
        assert "[SQL" not in error
    assert report.metadata()["events_quarantined"] == 2
    with engine.connect() as conn:
        assert (
            conn.execute(
                sa.select(sa.func.count())
                .select_from(organizations)
                .where(organizations.c.name == "Forbidden")
            ).scalar_one()
            == 0
        )


# -- events.py: the drain's batches, write log and run metadata ----------------------------------


def test_the_drain_counts_its_batches_and_logs_each_batchs_writes(
    receiver: Receiver, clerk: ClerkEmulator, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Five organizations with ORGSYNC_WEBHOOK_BATCH_SIZE=2: three batches, each merged set-based
    (no fallback to one event at a time), each logging its own rows and lag; the run's metadata
    reports the batches and the largest lag the write log holds."""
    monkeypatch.setenv("ORGSYNC_WEBHOOK_BATCH_SIZE", "2")
    for i in range(5):
        deliver(receiver, clerk, "organization.created", clerk.create_organization(f"Org {i}"))
    fallback = logging.getLogger("orgsync-mutation-guards")
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    fallback.addHandler(handler)
    fallback.setLevel(logging.INFO)
    try:
        report = apply_pending_events(engine, load_settings(), fallback, write_path="webhook")
    finally:
        fallback.removeHandler(handler)

    assert not [message for message in messages if "fell back" in message]
    with engine.connect() as conn:
        logged = conn.execute(
            sa.select(write_log.c.table_name, write_log.c.rows, write_log.c.lag_seconds).order_by(
                write_log.c.id
            )
        ).all()
    assert [(table, rows) for table, rows, _lag in logged] == [
        ("organizations", 2),
        ("organizations", 2),
        ("organizations", 1),
    ]
    assert all(lag is not None for _table, _rows, lag in logged)
    metadata = report.metadata()
    assert (metadata["batches"], metadata["events_applied"]) == (3, 5)
    assert metadata["lag_seconds_max"] == round(max(lag for _table, _rows, lag in logged), 3)
    for key in ("duration_seconds", "lag_seconds_p50", "lag_seconds_p95", "lag_seconds_max"):
        assert isinstance(metadata[key], float), key
        assert metadata[key] == round(metadata[key], 3), key  # milliseconds, as documented


# -- webhooks.py: the receiver's answers -----------------------------------------------------------


def post_signed(url: str, secret: str, body: bytes, **overrides: str) -> httpx.Response:
    headers = {**svix_headers(secret, body), "content-type": "application/json", **overrides}
    return httpx.post(f"{url}/webhooks/clerk", content=body, headers=headers, timeout=30)


def inbox_count(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.select(sa.func.count()).select_from(webhook_inbox)).scalar_one()


def an_event(clerk: ClerkEmulator) -> bytes:
    return json.dumps(
        clerk.event_envelope("organization.created", clerk.create_organization("Acme"))
    ).encode()


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_body_over_the_limit_is_a_413_that_says_why(
    receiver: Receiver, engine: Engine, clerk: ClerkEmulator, chunked: bool
) -> None:
    body = b'{"pad":"' + b"x" * MAX_BODY_BYTES + b'"}'

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 256 * 1024):
            yield body[start : start + 256 * 1024]

    headers = {**svix_headers(receiver.secret, body), "content-type": "application/json"}
    content = chunks() if chunked else body
    response = httpx.post(f"{receiver.url}/webhooks/clerk", content=content, headers=headers, timeout=30)

    assert response.status_code == 413
    assert response.json() == {"error": f"body over {MAX_BODY_BYTES} bytes"}
    assert inbox_count(engine) == 0


def test_a_database_that_refuses_connections_is_a_503_with_retry_after(
    database_url: str, webhook_secret: str, clerk: ClerkEmulator
) -> None:
    """Svix must retry: a 503 with Retry-After and the documented error body."""
    settings = dataclasses.replace(
        load_settings(), webhook_apply="sensor", database_url=Secret("postgresql://postgres@127.0.0.1:1/none")
    )
    with serve_in_thread(create_app(settings)) as url:
        response = post_signed(url, webhook_secret, an_event(clerk))
        health = httpx.get(f"{url}/healthz", timeout=30)

    assert (health.status_code, health.json()) == (503, {"status": "database unavailable"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "30"
    assert response.json() == {"error": "inbox database unavailable; retry later"}


def test_with_auto_migrate_off_the_receiver_does_not_migrate(
    database_url: str, webhook_secret: str, clerk: ClerkEmulator
) -> None:
    """ORGSYNC_AUTO_MIGRATE=0: the receiver stores nothing in an unmigrated database and creates no
    table in it."""
    settings = dataclasses.replace(load_settings(), webhook_apply="sensor", auto_migrate=False)
    with serve_in_thread(create_app(settings)) as url:
        response = post_signed(url, webhook_secret, an_event(clerk))

    assert response.status_code != 200
    with sa.create_engine(database_url).connect() as conn:
        assert sa.inspect(conn).get_table_names() == []


def test_a_signing_secret_of_exactly_sixteen_bytes_is_accepted(
    database_url: str, monkeypatch: pytest.MonkeyPatch, clerk: ClerkEmulator
) -> None:
    """The shortest key the receiver takes is 16 bytes: it starts and stores what is signed with it."""
    secret = "whsec_" + base64.b64encode(os.urandom(16)).decode()
    monkeypatch.setenv("CLERK_WEBHOOK_SECRET", secret)
    settings = dataclasses.replace(load_settings(), webhook_apply="sensor")
    with serve_in_thread(create_app(settings)) as url:
        response = post_signed(url, secret, an_event(clerk))

    assert response.status_code == 200, response.text
    with sa.create_engine(database_url).connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(webhook_inbox)).scalar_one() == 1


def test_without_a_signing_secret_the_receiver_refuses_to_start_and_says_where_to_find_it() -> None:
    settings = dataclasses.replace(load_settings(), webhook_secret=None)
    with pytest.raises(SettingsError, match=r"CLERK_WEBHOOK_SECRET .* from Clerk's dashboard"):
        create_app(settings)


# -- store/apply.py: the quarantine ----------------------------------------------------------------


def test_an_orphan_membership_is_quarantined_with_a_reason_naming_both_ids(
    clerk: ClerkEmulator, engine: Engine
) -> None:
    org = clerk.create_organization("Acme")
    with engine.begin() as conn:
        apply.apply_organizations(conn, validate_organizations([org]).rows)
        row = MembershipRow("orgmem_orphan1", org["id"], "user_missing1", "member", "org:member", 1, 1)
        counts = apply.apply_memberships(conn, [row], source="full_sync")

    assert (counts.memberships.quarantined, counts.memberships.inserted) == (1, 0)
    with engine.connect() as conn:
        reasons = conn.execute(sa.select(sync_quarantine.c.clerk_id, sync_quarantine.c.reason)).all()
    assert [tuple(reason) for reason in reasons] == [
        (
            "orgmem_orphan1",
            f"organization {org['id']} or user user_missing1 does not exist "
            "(its own record failed validation or has not been seen yet)",
        )
    ]


def test_records_without_an_id_are_one_quarantine_row_whatever_their_key_order(engine: Engine) -> None:
    """Two id-less records with the same content in a different key order are the same record
    (jsonb does not keep key order): one row, refreshed by the last."""
    records = [
        QuarantinedRecord(Entity.ORGANIZATION, None, "first", {"name": "X", "slug": 1}),
        QuarantinedRecord(Entity.ORGANIZATION, None, "second", {"slug": 1, "name": "X"}),
    ]
    with engine.begin() as conn:
        apply.quarantine(conn, records, source="full_sync")

    with engine.connect() as conn:
        rows = conn.execute(sa.select(sync_quarantine.c.clerk_id, sync_quarantine.c.reason)).all()
    assert [tuple(row) for row in rows] == [(None, "second")]


def test_staging_tables_are_temporary_and_gone_at_commit(clerk: ClerkEmulator, engine: Engine) -> None:
    """The COPY staging tables never become tables of the schema, and the session that used them
    holds none after its commit."""
    org = clerk.create_organization("Acme")
    user = clerk.create_user("Ada", "Lovelace", "ada@example.com")
    with engine.connect() as conn:
        with conn.begin():
            apply.apply_organizations(conn, validate_organizations([org]).rows)
            apply.apply_profiles(conn, validate_profiles([user]).rows)
        visible = conn.execute(
            sa.text(
                "SELECT relname FROM pg_class"
                " WHERE relname LIKE 'orgsync_stage%' AND pg_table_is_visible(oid)"
            )
        ).all()
    assert visible == []
    with engine.connect() as conn:
        assert not [name for name in sa.inspect(conn).get_table_names() if name.startswith("orgsync_stage")]


def test_a_batched_membership_whose_embedded_organization_is_quarantined_counts_that_record(
    receiver: Receiver, clerk: ClerkEmulator, engine: Engine
) -> None:
    """Merged set-based, a membership lands while its embedded (unusable) organization copy is
    quarantined: the run counts that one quarantined record."""
    membership = a_membership(receiver, clerk, engine)
    changed = clerk.update_membership(
        membership["organization"]["id"], membership["public_user_data"]["user_id"], role="org:admin"
    )
    changed["organization"]["public_metadata"] = ["not", "an", "object"]
    deliver(receiver, clerk, "organizationMembership.updated", changed)

    report = apply_pending_events(engine, load_settings(), log, write_path="webhook")

    assert report.metadata()["records_quarantined"] == 1
    assert [row.role for row in members(engine).values()] == ["admin"]
    assert [entity for entity, _id, _source in quarantine_rows(engine)] == ["organization"]


# -- store/apply.py: tombstones ------------------------------------------------------------------


def test_a_tombstone_in_one_organization_does_not_block_the_users_membership_in_another(
    clerk: ClerkEmulator, engine: Engine
) -> None:
    """A user removed from organization A (a tombstone) may still be a member of B, even with data
    older than that removal."""
    org_a, org_b = clerk.create_organization("A"), clerk.create_organization("B")
    user = clerk.create_user("Ada", "Lovelace", "ada@example.com")
    removed_at_ms = clerk.now_ms()
    with engine.begin() as conn:
        apply.apply_organizations(conn, validate_organizations([org_a, org_b]).rows)
        apply.apply_profiles(conn, validate_profiles([user]).rows)
        apply.delete_memberships(
            conn, [MembershipKey(org_a["id"], user["id"], None)], as_of=ms(removed_at_ms)
        )
    older = removed_at_ms - 60_000
    with engine.begin() as conn:
        apply.apply_memberships(
            conn,
            [
                MembershipRow("orgmem_a1", org_a["id"], user["id"], "member", "org:member", older, older),
                MembershipRow("orgmem_b1", org_b["id"], user["id"], "member", "org:member", older, older),
            ],
            source="full_sync",
        )

    assert set(members(engine)) == {(org_b["id"], user["id"])}


def test_a_batch_repeating_a_record_with_the_same_updated_at_keeps_the_last(engine: Engine) -> None:
    """One listing can repeat a record (page shifts); on a tie in updated_at the later copy wins."""
    t0 = 1_716_883_200_000
    rows = [
        OrganizationRow("org_repeated1", "First copy", None, None, "{}", t0, t0),
        OrganizationRow("org_repeated1", "Last copy", None, None, "{}", t0, t0),
    ]
    with engine.begin() as conn:
        counts = apply.apply_organizations(conn, rows)

    assert (counts.received, counts.inserted) == (1, 1)
    with engine.connect() as conn:
        assert conn.execute(sa.select(organizations.c.name)).scalars().all() == ["Last copy"]
