"""`orgsync status` against a real PostgreSQL after real full syncs over the emulator."""

import json
import os
import subprocess
import sys

import dagster as dg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from orgsync_pipeline.clerk.emulator import ClerkEmulator
from orgsync_pipeline.definitions import defs
from orgsync_pipeline.status import collect_status, reason_kind, render_status
from orgsync_pipeline.store import write_log
from orgsync_pipeline.store.schema import sync_quarantine, webhook_inbox

ORGSYNC = [sys.executable, "-m", "orgsync_pipeline.cli"]


def run_full_sync() -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("clerk_full_sync").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )


def add_inbox_event(engine: Engine, svix_id: str, status: str, *, age: str, lag: str | None = None) -> None:
    """An inbox row received ``age`` ago and, with ``lag``, applied that long after receipt."""
    received = sa.func.now() - sa.cast(sa.literal(age), sa.Interval)
    applied = None if lag is None else received + sa.cast(sa.literal(lag), sa.Interval)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(webhook_inbox).values(
                svix_id=svix_id,
                event_type="user.updated",
                payload={"type": "user.updated", "data": {}},
                received_at=received,
                status=status,
                attempts=0,
                applied_at=applied,
            )
        )


@pytest.fixture
def synced(engine: Engine, emulator: ClerkEmulator) -> Engine:
    """Two real full syncs: the second one after Clerk lost one organization (with its two
    memberships) and one more membership."""
    emulator.seed_sample(organizations=6, users=8, memberships_per_org=2)
    assert run_full_sync().success
    gone, other = list(emulator.organizations)[:2]
    emulator.delete_organization(gone)
    member = next(m for m in emulator.memberships.values() if m["organization"]["id"] == other)
    emulator.delete_membership(other, member["public_user_data"]["user_id"])
    assert run_full_sync().success
    return engine


def test_status_after_full_syncs(synced: Engine) -> None:
    """Rows, deleted rows, last full sync success and last write through the full sync, per table."""
    status = collect_status(synced)

    tables = {t.table: t for t in status.tables}
    assert (tables["organizations"].rows, tables["organizations"].deleted_rows) == (6, 1)
    assert tables["profiles"].rows == 8 and tables["profiles"].deleted_rows == 0
    # Deleted memberships leave tombstones; those of a deleted organization go with it.
    assert tables["organization_members"].rows == 9 and tables["organization_members"].deleted_rows == 1
    for table in tables.values():
        assert table.last_full_sync_outcome == "success"
        assert table.last_write_path == "full_sync"
    assert status.inbox.pending == status.inbox.failed == status.inbox.dead == 0
    assert status.quarantine == {}


def test_status_shows_webhook_writes_inbox_and_quarantine(synced: Engine) -> None:
    """A logged webhook write after the sync becomes the last write; the inbox counts, oldest pending
    age and lag p95 come from webhook_inbox; quarantine reasons are grouped without their values."""
    with synced.begin() as conn:
        write_log.record_write(conn, path="webhook", table="profiles", rows=1, lag_seconds=0.5)
        conn.execute(
            sa.insert(sync_quarantine),
            [
                {
                    "entity": "profile",
                    "clerk_id": f"user_{i}",
                    "reason": f"email is_email (got 'x{i}')",
                    "payload": {},
                    "source": "full_sync",
                }
                for i in range(3)
            ],
        )
    add_inbox_event(synced, "p1", "pending", age="10 minutes")
    add_inbox_event(synced, "p2", "pending", age="1 minute")
    add_inbox_event(synced, "f1", "failed", age="5 minutes")
    add_inbox_event(synced, "d1", "dead", age="2 hours")
    for i in range(20):
        add_inbox_event(synced, f"a{i}", "applied", age="30 minutes", lag=f"{i + 1} seconds")
    add_inbox_event(synced, "old", "applied", age="3 hours", lag="500 seconds")  # outside the hour

    status = collect_status(synced)

    tables = {t.table: t for t in status.tables}
    assert tables["profiles"].last_write_path == "webhook"
    assert tables["organizations"].last_write_path == "full_sync"
    inbox = status.inbox
    assert (inbox.pending, inbox.failed, inbox.dead) == (2, 1, 1)
    assert 600 <= inbox.oldest_pending_age_seconds < 700
    assert inbox.applied_last_hour == 20
    assert inbox.apply_lag_p95_seconds == pytest.approx(19.05)
    assert inbox.apply_lag_max_seconds == pytest.approx(20)
    assert status.quarantine == {"profile: email is_email": 3}
    text = render_status(status)
    assert "2 pending, 1 failed, 1 dead" in text and "via webhook" in text


def test_failed_full_sync_shows_its_outcome(synced: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLERK_SECRET_KEY", "sk_test_refused_by_the_emulator")
    assert not run_full_sync().success

    tables = {t.table: t for t in collect_status(synced).tables}

    assert tables["organizations"].last_full_sync_outcome == "failure"
    assert "CLERK_SECRET_KEY" in tables["organizations"].last_full_sync_error
    assert tables["organizations"].last_write_path == "full_sync"  # the earlier successful write


def test_status_command_json(synced: Engine, database_url: str) -> None:
    """`orgsync status --json` prints what collect_status reads, for scripts."""
    env = {**os.environ, "DATABASE_URL": database_url}

    completed = subprocess.run(
        [*ORGSYNC, "status", "--json"], env=env, capture_output=True, text=True, timeout=120
    )

    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert [t["table"] for t in report["tables"]] == ["organizations", "profiles", "organization_members"]
    assert report["tables"][0]["rows"] == 6 and report["tables"][0]["last_full_sync_outcome"] == "success"
    assert report["inbox"]["pending"] == 0


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("email is_email (got 'not-an-email')", "email is_email"),
        ("id 'org_1' appears more than once in the listing", "id appears more than once in the listing"),
        (
            "(organization_id='org_1', user_id='user_2') appears more than once in the listing",
            "(organization_id, user_id) appears more than once in the listing",
        ),
        ("name is missing; slug str_length (got 'x')", "name is missing; slug str_length"),
    ],
)
def test_reason_kind_drops_values(reason: str, kind: str) -> None:
    assert reason_kind(reason) == kind
