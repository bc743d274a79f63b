"""Sensors: launch an apply run when the webhook inbox holds events to apply."""

import dagster as dg

from orgsync_pipeline.jobs import clerk_webhook_apply
from orgsync_pipeline.resources import PostgresResource
from orgsync_pipeline.settings import load_settings
from orgsync_pipeline.store.inbox import claimable_summary

IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


@dg.sensor(
    name="clerk_webhook_sensor",
    job=clerk_webhook_apply,
    minimum_interval_seconds=load_settings().webhook_sensor_interval,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Launches clerk_webhook_apply when the inbox holds pending events (one run at a time).",
)
def clerk_webhook_sensor(
    context: dg.SensorEvaluationContext, postgres: PostgresResource
) -> dg.SensorResult | dg.SkipReason:
    """One cheap query per tick; the inbox, not the cursor, says what is left to do."""
    with postgres.engine().connect() as conn:
        summary = claimable_summary(conn)
    if not summary.claimable:
        return dg.SkipReason("no pending webhook events")
    runs = context.instance.get_run_records(dg.RunsFilter(job_name=clerk_webhook_apply.name), limit=1)
    latest = runs[0].dagster_run if runs else None
    if latest is not None and latest.status in IN_PROGRESS:
        return dg.SkipReason(f"run {latest.run_id} is still applying events")
    # The key names the batch and the run before it, so a batch launches once, yet is launched
    # again after a run that failed without touching it (its key would otherwise block forever).
    run_key = f"inbox-{summary.max_id}-{summary.attempts}-after-{latest.run_id if latest else 'none'}"
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(run_key=run_key, tags={"orgsync/pending_events": str(summary.claimable)})
        ],
        cursor=str(summary.max_id),
    )
