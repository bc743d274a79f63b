"""Jobs: the full sync of every Clerk table."""

import dagster as dg

from orgsync_pipeline.assets import GROUP, WEBHOOK_GROUP

# The three steps run one after another anyway; in-process saves the ~10 s of subprocess start-up
# the default multiprocess executor spends per run.
clerk_full_sync = dg.define_asset_job(
    "clerk_full_sync",
    selection=dg.AssetSelection.groups(GROUP),
    executor_def=dg.in_process_executor,
    description="List Clerk's organizations, users and memberships and reconcile Postgres with them.",
)

clerk_webhook_apply = dg.define_asset_job(
    "clerk_webhook_apply",
    selection=dg.AssetSelection.groups(WEBHOOK_GROUP),
    executor_def=dg.in_process_executor,
    description="Apply pending Clerk webhook events from the inbox (launched by clerk_webhook_sensor).",
)
