"""The orgsync code location: assets, checks, jobs, schedules, sensors and resources."""

import dagster as dg

from orgsync_pipeline.assets import full_sync_assets
from orgsync_pipeline.checks import full_sync_checks, webhook_checks
from orgsync_pipeline.jobs import full_sync_job, webhook_apply_job
from orgsync_pipeline.resources import resources_from_environment
from orgsync_pipeline.schedules import full_sync_schedule
from orgsync_pipeline.sensors import webhook_sensor
from orgsync_pipeline.settings import definition_settings
from orgsync_pipeline.webhook_apply import webhook_inbox

# The one read of the environment when the code location loads (see definition_settings).
SETTINGS = definition_settings()

defs = dg.Definitions(
    assets=[*full_sync_assets, webhook_inbox],
    asset_checks=[*full_sync_checks, *webhook_checks],
    jobs=[
        full_sync_job(SETTINGS.step_retry_delay_seconds),
        webhook_apply_job(SETTINGS.step_retry_delay_seconds),
    ],
    schedules=[full_sync_schedule(SETTINGS.full_sync_cron)],
    sensors=[webhook_sensor(SETTINGS.webhook_sensor_interval)],
    resources=resources_from_environment(SETTINGS),
)
