"""Schedules: the full sync, hourly unless ORGSYNC_FULL_SYNC_CRON says otherwise."""

import dagster as dg

from orgsync_pipeline.jobs import clerk_full_sync
from orgsync_pipeline.settings import load_settings

clerk_full_sync_schedule = dg.ScheduleDefinition(
    name="clerk_full_sync_schedule",
    target=clerk_full_sync,
    cron_schedule=load_settings().full_sync_cron,
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="The full sync that makes Postgres right: repairs drift from lost or reordered webhooks.",
)
