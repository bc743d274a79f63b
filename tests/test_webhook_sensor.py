"""`clerk_webhook_sensor` in sensor mode (the webhook_apply resource's mode, ORGSYNC_WEBHOOK_APPLY=sensor:
every write inside a Dagster run), evaluated with `build_sensor_context` against a real inbox. Inline
mode's backstop and the write-log witness are in test_inline_apply.py."""

import uuid

import dagster as dg
import sqlalchemy as sa
from dagster._core.storage.dagster_run import DagsterRun
from sqlalchemy.engine import Engine

from orgsync_pipeline.clerk.emulator import ClerkEmulator
from orgsync_pipeline.definitions import defs
from orgsync_pipeline.resources import PostgresResource, WebhookApplyResource
from orgsync_pipeline.store.schema import organizations, webhook_inbox
from tests.support import Receiver


def evaluate(
    instance: dg.DagsterInstance, database_url: str, cursor: str | None = None
) -> dg.SensorResult | dg.SkipReason:
    """One tick of the code location's sensor; the mode comes from its webhook_apply resource."""
    resources = {
        "postgres": PostgresResource(database_url=database_url),
        "webhook_apply": WebhookApplyResource(mode="sensor"),
    }
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
        result = defs.resolve_sensor_def("clerk_webhook_sensor")(context)
    assert isinstance(result, dg.SensorResult | dg.SkipReason)
    return result


def add_run(instance: dg.DagsterInstance, status: dg.DagsterRunStatus) -> str:
    run_id = str(uuid.uuid4())
    instance.add_run(DagsterRun(job_name="clerk_webhook_apply", run_id=run_id, status=status))
    return run_id


def post_org(receiver: Receiver, name: str) -> str:
    clerk = ClerkEmulator()
    org = clerk.create_organization(name)
    assert receiver.post(clerk.event_envelope("organization.created", org)).status_code == 200
    return org["id"]


def test_skips_when_the_inbox_is_empty(engine: Engine, database_url: str) -> None:
    """No pending event: a skip, and no run."""
    result = evaluate(dg.DagsterInstance.ephemeral(), database_url)
    assert isinstance(result, dg.SkipReason)


def test_requests_one_run_for_pending_events_that_applies_them(
    receiver: Receiver, engine: Engine, database_url: str
) -> None:
    """Pending events: one run request, valid for clerk_webhook_apply; running it applies them."""
    org_ids = [post_org(receiver, f"Org {i}") for i in range(3)]
    instance = dg.DagsterInstance.ephemeral()

    result = evaluate(instance, database_url)

    assert isinstance(result, dg.SensorResult)
    (request,) = result.run_requests
    with engine.connect() as conn:
        max_id = conn.execute(sa.select(sa.func.max(webhook_inbox.c.id))).scalar_one()
    assert request.run_key.startswith(f"inbox-{max_id}-")
    job = defs.resolve_job_def("clerk_webhook_apply")
    dg.validate_run_config(job, request.run_config)
    assert job.execute_in_process(run_config=request.run_config, instance=instance).success
    with engine.connect() as conn:
        assert set(conn.execute(sa.select(organizations.c.id)).scalars()) == set(org_ids)
    assert isinstance(evaluate(instance, database_url), dg.SkipReason)


def test_never_two_apply_runs_at_once(receiver: Receiver, engine: Engine, database_url: str) -> None:
    """While an apply run is queued or running, the sensor waits."""
    post_org(receiver, "Acme")
    instance = dg.DagsterInstance.ephemeral()
    running = add_run(instance, dg.DagsterRunStatus.STARTED)

    result = evaluate(instance, database_url)

    assert isinstance(result, dg.SkipReason)
    assert running in result.skip_message


def test_a_failed_run_does_not_block_its_batch_forever(
    receiver: Receiver, engine: Engine, database_url: str
) -> None:
    """A run that failed without touching the batch leaves the events pending; the next request for the
    same batch gets a new run_key (the daemon would skip a reused one forever)."""
    post_org(receiver, "Acme")
    instance = dg.DagsterInstance.ephemeral()
    first = evaluate(instance, database_url)
    add_run(instance, dg.DagsterRunStatus.FAILURE)

    second = evaluate(instance, database_url)

    assert isinstance(first, dg.SensorResult) and isinstance(second, dg.SensorResult)
    assert first.run_requests[0].run_key != second.run_requests[0].run_key


def test_a_cursor_reset_cannot_drop_work(receiver: Receiver, engine: Engine, database_url: str) -> None:
    """The inbox, not the cursor, says what is pending: any cursor still yields a run for pending events."""
    post_org(receiver, "Acme")
    instance = dg.DagsterInstance.ephemeral()
    for cursor in (None, "0", "999999"):
        result = evaluate(instance, database_url, cursor=cursor)
        assert isinstance(result, dg.SensorResult), cursor
        assert len(result.run_requests) == 1


def test_runs_by_default_at_a_short_interval() -> None:
    """The sensor is on as soon as the daemon loads the code, every 5 s unless configured."""
    sensor = defs.resolve_sensor_def("clerk_webhook_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING
    assert sensor.minimum_interval_seconds == 5
    assert sensor.job_name == "clerk_webhook_apply"


def test_the_sensor_never_runs_ddl(database_url: str) -> None:
    """On a database nobody migrated yet, a tick skips naming `orgsync migrate` and creates nothing."""
    with dg.DagsterInstance.ephemeral() as instance:
        result = evaluate(instance, database_url)

    assert isinstance(result, dg.SkipReason) and "orgsync migrate" in (result.skip_message or "")
    engine = sa.create_engine(database_url)
    with engine.connect() as conn:
        assert sa.inspect(conn).get_table_names() == []
    engine.dispose()
