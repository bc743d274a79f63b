"""Schedules: the full sync, hourly unless ORGSYNC_FULL_SYNC_CRON says otherwise."""

import dagster as dg

from orgsync_pipeline.jobs import FULL_SYNC_JOB
from orgsync_pipeline.settings import DEFAULT_FULL_SYNC_CRON


def full_sync_schedule(cron_schedule: str = DEFAULT_FULL_SYNC_CRON) -> dg.ScheduleDefinition:
    """``clerk_full_sync_schedule`` on ``cron_schedule``, which ``definitions`` takes from
    ``definition_settings().full_sync_cron`` (ORGSYNC_FULL_SYNC_CRON) when the code location loads."""
    return dg.ScheduleDefinition(
        name="clerk_full_sync_schedule",
        job_name=FULL_SYNC_JOB,
        cron_schedule=cron_schedule,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="The full sync that makes Postgres right: repairs drift from lost or reordered webhooks.",
    )
