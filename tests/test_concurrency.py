"""Concurrent writers on a real PostgreSQL: deadlocks retried, two full syncs never at once."""

import logging
import os
import random
import threading
import time
from collections.abc import Callable

import dagster as dg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from orgsync_pipeline import ondemand
from orgsync_pipeline.clerk.client import ClerkClient
from orgsync_pipeline.clerk.emulator import DEFAULT_SECRET_KEY, ClerkEmulator
from orgsync_pipeline.definitions import defs
from orgsync_pipeline.settings import load_settings
from orgsync_pipeline.store.retry import run_in_transaction
from orgsync_pipeline.store.schema import organization_members, organizations, webhook_inbox
from orgsync_pipeline.sync import SKIPPED, _full_sync_lock_key, sync_organizations
from tests.support import EMULATOR_URL, Receiver

log = logging.getLogger("test_concurrency")


def test_a_deadlock_is_rolled_back_and_retried(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    """Two transactions locking two rows in opposite orders deadlock once; PostgreSQL aborts one,
    run_in_transaction runs it again, and both writes land."""
    with engine.begin() as conn:
        conn.execute(
            sa.insert(organizations), [{"id": i, "name": i, "public_metadata": {}} for i in ("a", "b")]
        )
    barrier = threading.Barrier(2, timeout=10)
    attempts = {"ab": 0, "ba": 0}

    def writer(name: str, first: str, second: str) -> Callable[[Connection], None]:
        def fn(conn: Connection) -> None:
            attempts[name] += 1
            conn.execute(sa.update(organizations).where(organizations.c.id == first).values(slug=name))
            if attempts[name] == 1:
                barrier.wait()  # both hold their first row before asking for the second
            conn.execute(sa.update(organizations).where(organizations.c.id == second).values(slug=name))

        return fn

    errors: list[BaseException] = []

    def run(name: str, first: str, second: str) -> None:
        try:
            run_in_transaction(engine, writer(name, first, second), what=name)
        except BaseException as exc:  # reported by the assertion below
            errors.append(exc)

    with caplog.at_level(logging.WARNING, logger="orgsync_pipeline.store.retry"):
        threads = [threading.Thread(target=run, args=args) for args in (("ab", "a", "b"), ("ba", "b", "a"))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert errors == []
    assert sorted(attempts.values()) == [1, 2]
    assert "DeadlockDetected" in caplog.text
    with engine.connect() as conn:
        slugs = set(conn.execute(sa.select(organizations.c.slug)).scalars())
    assert len(slugs) == 1  # the retried transaction ran last and wrote both rows


def test_a_second_full_sync_waits_then_skips(engine: Engine, emulator: ClerkEmulator) -> None:
    """While another full sync holds the lock, a second one writes nothing: it waits, then skips
    with a clear reason; once the lock is free it runs."""
    emulator.create_organization("Acme")
    settings = load_settings()
    with engine.connect() as holder, ClerkClient(DEFAULT_SECRET_KEY, EMULATOR_URL) as client:
        assert holder.execute(sa.select(sa.func.pg_try_advisory_lock(*_full_sync_lock_key()))).scalar_one()
        holder.commit()
        report = sync_organizations(engine, client, settings, log, lock_wait_seconds=1.0)
        assert report.skipped == SKIPPED
        assert report.metadata() == {"skipped": "another clerk_full_sync is running"}
        with engine.connect() as conn:
            assert conn.execute(sa.select(sa.func.count()).select_from(organizations)).scalar_one() == 0

        done: list[int] = []
        waiter = threading.Thread(
            target=lambda: done.append(
                sync_organizations(engine, client, settings, log, lock_wait_seconds=60).inserted
            )
        )
        waiter.start()
        waiter.join(2)
        assert waiter.is_alive() and done == []  # still waiting for the lock
        holder.execute(sa.select(sa.func.pg_advisory_unlock(*_full_sync_lock_key())))
        holder.commit()
        waiter.join(60)
    assert done == [1]


def _run_job(name: str) -> bool:
    result = defs.resolve_job_def(name).execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False
    )
    return result.success


def _mutate(emulator: ClerkEmulator, orgs: list[str], users: list[str], rng: random.Random) -> None:
    """One Clerk change touching the hot organizations."""
    org, user = rng.choice(orgs), rng.choice(users)
    choice = rng.randrange(4)
    if choice == 0:
        emulator.update_organization(org, name=f"Org {rng.randrange(10**6)}")
    elif choice == 1:
        emulator.update_user(user, first_name=f"N{rng.randrange(10**6)}")
    elif emulator.get_membership(org, user) is None:
        emulator.create_membership(org, user, rng.choice(["org:admin", "org:member"]))
    elif choice == 2:
        emulator.update_membership(org, user, role=rng.choice(["org:admin", "org:member"]))
    else:
        emulator.delete_membership(org, user)


def test_full_syncs_webhooks_and_changes_at_once_converge_without_deadlocks(
    engine: Engine, emulator: ClerkEmulator, receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    """For ORGSYNC_STRESS_SECONDS (default 20; the issue asks for 60): full syncs in a loop, apply runs
    in a loop, on-demand syncs in a loop, the receiver storing (and applying inline) the events of a
    stream of Clerk changes on the same organizations. No run fails, nothing deadlocks, and a final
    full sync equals Clerk."""
    seconds = float(os.environ.get("ORGSYNC_STRESS_SECONDS", "20"))
    rng = random.Random(8)
    orgs = [emulator.create_organization(f"Hot {i}")["id"] for i in range(8)]
    users = [emulator.create_user(f"U{i}", "Stress", f"u{i}@stress.test")["id"] for i in range(16)]
    for i, user in enumerate(users):
        emulator.create_membership(orgs[i % len(orgs)], user)
    emulator.add_webhook_endpoint(f"{receiver.url}/webhooks/clerk", receiver.secret)
    deadline = time.monotonic() + seconds
    outcomes: dict[str, list[bool]] = {"clerk_full_sync": [], "clerk_webhook_apply": []}

    def loop(name: str) -> None:
        while time.monotonic() < deadline:
            outcomes[name].append(_run_job(name))

    on_demand: list[int] = []

    def on_demand_loop() -> None:
        """What the app asks when users sign in or switch organization, on the same organizations."""
        settings, picker = load_settings(), random.Random(9)
        with ClerkClient(DEFAULT_SECRET_KEY, EMULATOR_URL) as client:
            while time.monotonic() < deadline:
                ondemand.sync_organization(engine, client, picker.choice(orgs), settings)
                ondemand.sync_user(engine, client, picker.choice(users), settings)
                on_demand.append(2)

    with caplog.at_level(logging.WARNING):
        runners = [threading.Thread(target=loop, args=(name,)) for name in outcomes]
        runners.append(threading.Thread(target=on_demand_loop))
        for runner in runners:
            runner.start()
        while time.monotonic() < deadline:
            _mutate(emulator, orgs, users, rng)
            time.sleep(0.02)
        for runner in runners:
            runner.join(300)
        assert emulator.wait_for_deliveries(60)
        assert _run_job("clerk_webhook_apply") and _run_job("clerk_full_sync")

    assert outcomes["clerk_full_sync"] and all(outcomes["clerk_full_sync"]), outcomes
    assert outcomes["clerk_webhook_apply"] and all(outcomes["clerk_webhook_apply"]), outcomes
    assert on_demand, "no on-demand sync ran"
    assert "DeadlockDetected" not in caplog.text
    with engine.connect() as conn:
        errors = conn.execute(
            sa.select(webhook_inbox.c.last_error).where(webhook_inbox.c.last_error.ilike("%deadlock%"))
        ).all()
        names = dict(
            conn.execute(
                sa.select(organizations.c.id, organizations.c.name).where(
                    organizations.c.deleted_at.is_(None)
                )
            ).all()
        )
        members = {
            tuple(row)
            for row in conn.execute(
                sa.select(
                    organization_members.c.organization_id,
                    organization_members.c.user_id,
                    organization_members.c.clerk_role,
                )
            )
        }
    assert errors == []
    assert names == {org_id: org["name"] for org_id, org in emulator.organizations.items()}
    assert members == {
        (m["organization"]["id"], m["public_user_data"]["user_id"], m["role"])
        for m in emulator.memberships.values()
    }
