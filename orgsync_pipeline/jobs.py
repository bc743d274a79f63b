"""Jobs: the full sync of every Clerk table."""

import dagster as dg

from orgsync_pipeline.assets import GROUP

# The three steps run one after another anyway; in-process saves the ~10 s of subprocess start-up
# the default multiprocess executor spends per run.
clerk_full_sync = dg.define_asset_job(
    "clerk_full_sync",
    selection=dg.AssetSelection.groups(GROUP),
    executor_def=dg.in_process_executor,
    description="List Clerk's organizations, users and memberships and reconcile Postgres with them.",
)
