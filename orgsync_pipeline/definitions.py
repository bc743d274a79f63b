"""The orgsync code location: assets, checks, jobs, schedules and resources."""

import dagster as dg

from orgsync_pipeline.assets import full_sync_assets
from orgsync_pipeline.checks import full_sync_checks
from orgsync_pipeline.jobs import clerk_full_sync
from orgsync_pipeline.resources import resources_from_environment
from orgsync_pipeline.schedules import clerk_full_sync_schedule

defs = dg.Definitions(
    assets=full_sync_assets,
    asset_checks=full_sync_checks,
    jobs=[clerk_full_sync],
    schedules=[clerk_full_sync_schedule],
    resources=resources_from_environment(),
)
