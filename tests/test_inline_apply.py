"""Inline apply: the receiver applies what it commits, the sensor rescues what it leaves and reports
its writes once, poison events are quarantined at once; over real HTTP and real PostgreSQL."""

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from orgsync_pipeline.clerk.emulator import ClerkEmulator
from orgsync_pipeline.definitions import defs
from orgsync_pipeline.resources import PostgresResource, WebhookApplyResource
from orgsync_pipeline.settings import load_settings
from orgsync_pipeline.store.locking import drain_lock_key
from orgsync_pipeline.store.schema import organization_members, organizations, profiles, webhook_inbox
from orgsync_pipeline.store.write_log import write_log
from orgsync_pipeline.webhooks import create_app, serve_in_thread
from tests.support import Receiver

WAIT_SECONDS = 60


def wait_for(condition: Callable[[], Any], what: str) -> Any:
    """Poll until ``condition()`` is truthy (a generous bound: this asserts an outcome, not a time)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


def statuses(engine: Engine) -> list[tuple[str, str, int]]:
    with engine.connect() as conn:
        query = sa.select(webhook_inbox.c.event_type, webhook_inbox.c.status, webhook_inbox.c.attempts)
        return [tuple(row) for row in conn.execute(query.order_by(webhook_inbox.c.id))]


def none_pending(engine: Engine) -> bool:
    return all(status not in ("pending", "failed") for _, status, _ in statuses(engine))


def evaluate(database_url: str, cursor: str | None, instance: dg.DagsterInstance) -> Any:
    """One tick of the code location's sensor in inline mode (the default webhook_apply resource)."""
    resources = {
        "postgres": PostgresResource(database_url=database_url),
        "webhook_apply": WebhookApplyResource(mode="inline"),
    }
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        return defs.resolve_sensor_def("clerk_webhook_sensor")(context)


def reported(result: Any) -> dict[tuple[str, str], int]:
    """Rows reported per (table, path) by one sensor evaluation."""
    events = getattr(result, "asset_events", None) or []
    totals: dict[tuple[str, str], int] = {}
    for event in events:
        key = (event.asset_key.to_user_string(), event.metadata["path"].value)
        totals[key] = totals.get(key, 0) + event.metadata["rows_written"].value
    return totals


def worker_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "orgsync-apply-worker" and t.is_alive()]


def test_an_event_is_applied_without_any_dagster_run(inline_receiver: Receiver, engine: Engine) -> None:
    """The receiver answers, then applies the event itself and logs the write for the sensor."""
    clerk = ClerkEmulator()
    org = clerk.create_organization("Acme")
    assert inline_receiver.post(clerk.event_envelope("organization.created", org)).status_code == 200

    with engine.connect() as conn:
        query = sa.select(organizations.c.name).where(organizations.c.id == org["id"])
        wait_for(lambda: conn.execute(query).scalar_one_or_none(), "the organization row")
        conn.rollback()
        logged = conn.execute(sa.select(write_log.c.path, write_log.c.table_name, write_log.c.rows)).all()
    assert statuses(engine) == [("organization.created", "applied", 1)]
    assert [tuple(row) for row in logged] == [("webhook", "organizations", 1)]


def test_the_worker_stops_with_the_app(database_url: str, webhook_secret: str) -> None:
    """Starlette's lifespan starts one worker per app and stops it on shutdown."""
    before = len(worker_threads())
    settings = dataclasses.replace(load_settings(), webhook_apply="inline")
    with serve_in_thread(create_app(settings)):
        assert len(worker_threads()) == before + 1
    assert len(worker_threads()) == before


def test_sensor_mode_leaves_events_to_the_apply_run(receiver: Receiver, engine: Engine) -> None:
    """--apply sensor keeps today's behaviour: no worker, the event waits for clerk_webhook_apply."""
    assert not worker_threads()
    clerk = ClerkEmulator()
    assert receiver.post(
        clerk.event_envelope("organization.created", clerk.create_organization("A"))
    ).is_success
    assert statuses(engine) == [("organization.created", "pending", 0)]


def test_a_receiver_stopped_before_applying_is_rescued_by_the_backstop(
    engine: Engine, database_url: str, webhook_secret: str
) -> None:
    """A receiver that answered 2xx but stopped before applying (here: another drain held the inbox
    until it stopped) leaves the event pending; past the backstop the sensor launches a run that
    applies it. Before the backstop, the sensor leaves it to the receivers."""
    clerk = ClerkEmulator()
    org = clerk.create_organization("Rescued")
    settings = dataclasses.replace(load_settings(), webhook_apply="inline")
    with engine.connect() as holder:
        holder.execute(sa.select(sa.func.pg_advisory_lock(*drain_lock_key())))
        with serve_in_thread(create_app(settings)) as url:
            response = Receiver(url, webhook_secret).post(clerk.event_envelope("organization.created", org))
            assert response.status_code == 200
        holder.execute(sa.select(sa.func.pg_advisory_unlock(*drain_lock_key())))
        holder.commit()
    assert statuses(engine) == [("organization.created", "pending", 0)]

    instance = dg.DagsterInstance.ephemeral()
    assert isinstance(evaluate(database_url, None, instance), dg.SkipReason)  # younger than 30 s
    with engine.begin() as conn:
        conn.execute(
            sa.update(webhook_inbox).values(received_at=sa.func.now() - sa.text("interval '1 minute'"))
        )
    result = evaluate(database_url, None, instance)

    (request,) = result.run_requests
    job = defs.resolve_job_def("clerk_webhook_apply")
    run = job.execute_in_process(instance=instance, tags=request.tags, run_config=request.run_config)
    assert run.success
    assert statuses(engine) == [("organization.created", "applied", 1)]
    (materialization,) = run.get_asset_materialization_events()
    assert materialization.asset_key == dg.AssetKey("organizations")


def test_the_sensor_reports_each_inline_write_once_across_ticks_and_restarts(
    inline_receiver: Receiver, engine: Engine, database_url: str
) -> None:
    """Writes made outside runs become materializations of their tables: each once, whatever the
    ticks, and again only when a tick's result was lost (its cursor never stored)."""
    clerk = ClerkEmulator()
    for name in ("A", "B", "C"):
        inline_receiver.post(clerk.event_envelope("organization.created", clerk.create_organization(name)))
    inline_receiver.post(
        clerk.event_envelope("user.created", clerk.create_user("Ada", "L", "ada@example.com"))
    )
    wait_for(lambda: len(statuses(engine)) == 4 and none_pending(engine), "the inline apply")
    instance = dg.DagsterInstance.ephemeral()

    first = evaluate(database_url, None, instance)
    assert reported(first) == {("organizations", "webhook"): 3, ("profiles", "webhook"): 1}
    assert first.asset_events[0].metadata["lag_seconds_max"].value >= 0
    assert reported(evaluate(database_url, first.cursor, instance)) == {}

    inline_receiver.post(clerk.event_envelope("organization.created", clerk.create_organization("D")))
    wait_for(lambda: len(statuses(engine)) == 5 and none_pending(engine), "the inline apply")
    second = evaluate(database_url, first.cursor, instance)  # a restarted daemon: the stored cursor
    assert reported(second) == {("organizations", "webhook"): 1}
    lost = evaluate(database_url, first.cursor, instance)  # second's cursor was never stored
    assert reported(lost) == {("organizations", "webhook"): 1}
    assert reported(evaluate(database_url, lost.cursor, instance)) == {}
    with engine.connect() as conn:
        unreported = conn.execute(sa.select(sa.func.count()).where(write_log.c.reported_at.is_(None)))
        assert unreported.scalar_one() == 0


@pytest.mark.parametrize("mode", ["inline", "sensor"])
def test_poison_events_are_quarantined_on_their_first_attempt(
    mode: str, engine: Engine, database_url: str, webhook_secret: str
) -> None:
    """Payloads that can never apply (no id, a non-string id) are quarantined with their reason at
    once, by the receiver or the apply run alike; the good event beside them lands; no event dies."""
    clerk = ClerkEmulator()
    org = clerk.create_organization("Good")
    settings = dataclasses.replace(load_settings(), webhook_apply=mode)
    with serve_in_thread(create_app(settings)) as url:
        receiver = Receiver(url, webhook_secret)
        receiver.post(
            clerk.event_envelope("organization.deleted", {"object": "organization", "deleted": True})
        )
        receiver.post(
            clerk.event_envelope("user.deleted", {"object": "user", "id": ["user_1"], "deleted": True})
        )
        receiver.post(clerk.event_envelope("organization.created", org))
        if mode == "inline":
            wait_for(lambda: none_pending(engine), "the inline apply")
    if mode == "sensor":
        run = defs.resolve_job_def("clerk_webhook_apply").execute_in_process(
            instance=dg.DagsterInstance.ephemeral()
        )
        (check,) = run.get_asset_check_evaluations()
        assert check.passed

    assert statuses(engine) == [
        ("organization.deleted", "quarantined", 1),
        ("user.deleted", "quarantined", 1),
        ("organization.created", "applied", 1),
    ]
    with engine.connect() as conn:
        errors = (
            conn.execute(sa.select(webhook_inbox.c.last_error).order_by(webhook_inbox.c.id)).scalars().all()
        )
    assert "no usable id" in errors[0] and "no usable id" in errors[1]


def test_inline_apply_a_dagster_run_and_a_full_sync_converge(
    emulator: ClerkEmulator, engine: Engine, database_url: str, webhook_secret: str
) -> None:
    """Clerk changes delivered to an inline receiver while clerk_webhook_apply runs and a full sync
    runs, all at once: the tables end up as Clerk is."""
    emulator.seed_sample(organizations=4, users=10, memberships_per_org=3)
    settings = dataclasses.replace(load_settings(), webhook_apply="inline")
    failures: list[BaseException] = []

    def run_job(name: str) -> None:
        try:
            # One instance per thread: the ephemeral instance's SQLite storage is per thread.
            instance = dg.DagsterInstance.ephemeral()
            result = defs.resolve_job_def(name).execute_in_process(instance=instance, raise_on_error=False)
            assert result.success, name
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    with serve_in_thread(create_app(settings)) as url:
        emulator.add_webhook_endpoint(f"{url}/webhooks/clerk", webhook_secret, retry_delays=[0.2] * 20)
        jobs = [
            threading.Thread(target=run_job, args=(name,))
            for name in ("clerk_full_sync", "clerk_webhook_apply")
        ]
        for job in jobs:
            job.start()
        _mutate(emulator)
        for job in jobs:
            job.join()
        assert emulator.wait_for_deliveries(timeout=WAIT_SECONDS)
        wait_for(lambda: none_pending(engine), "the inline apply")
    assert not failures and not emulator.failed_deliveries
    assert _database_state(engine) == _clerk_state(emulator)


def _mutate(clerk: ClerkEmulator) -> None:
    orgs = sorted(clerk.organizations)
    users = sorted(clerk.users)
    newcomer = clerk.create_user("Grace", "Hopper", "grace@example.com")
    clerk.create_membership(orgs[0], newcomer["id"], role="org:admin")
    clerk.update_organization(orgs[1], name="Renamed")
    clerk.update_user(users[0], first_name="Changed")
    for membership in list(clerk.memberships.values())[:2]:
        clerk.delete_membership(membership["organization"]["id"], membership["public_user_data"]["user_id"])
    clerk.delete_organization(orgs[2])
    clerk.create_organization("Brand New")


def _clerk_state(clerk: ClerkEmulator) -> dict[str, Any]:
    return {
        "organizations": {org["id"]: org["name"] for org in clerk.organizations.values()},
        "profiles": {user["id"]: user["first_name"] for user in clerk.users.values()},
        "memberships": {
            (m["organization"]["id"], m["public_user_data"]["user_id"]): m["role"]
            for m in clerk.memberships.values()
        },
    }


def _database_state(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        orgs = conn.execute(
            sa.select(organizations.c.id, organizations.c.name).where(organizations.c.deleted_at.is_(None))
        )
        users = conn.execute(
            sa.select(profiles.c.id, profiles.c.first_name).where(profiles.c.deleted_at.is_(None))
        )
        members = conn.execute(
            sa.select(
                organization_members.c.organization_id,
                organization_members.c.user_id,
                organization_members.c.clerk_role,
            )
        )
        return {
            "organizations": dict(orgs.tuples().all()),
            "profiles": dict(users.tuples().all()),
            "memberships": {(org_id, user_id): role for org_id, user_id, role in members},
        }
