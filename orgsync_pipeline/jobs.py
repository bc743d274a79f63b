"""Jobs: the full sync of every Clerk table."""

import dagster as dg

from orgsync_pipeline.assets import GROUP
from orgsync_pipeline.webhook_apply import apply_webhook_events

# Run tags the run queue limits (deploy/dagster.yaml); the daemon never starts two runs carrying one.
FULL_SYNC_TAG = "orgsync/full-sync"
WEBHOOK_APPLY_TAG = "orgsync/webhook-apply"

# Transient causes only (Clerk unavailable, a lost database connection, a deadlock past the apply
# layer's own retries): a step failing for any other reason raises dg.Failure(allow_retries=False)
# (orgsync_pipeline.failures.step_failures), so a refused deletion is never tried again.
TRANSIENT_RETRY_POLICY = dg.RetryPolicy(
    max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
)

# The three steps run one after another anyway; in-process saves the ~10 s of subprocess start-up
# the default multiprocess executor spends per run.
clerk_full_sync = dg.define_asset_job(
    "clerk_full_sync",
    selection=dg.AssetSelection.groups(GROUP),
    executor_def=dg.in_process_executor,
    description="List Clerk's organizations, users and memberships and reconcile Postgres with them.",
    # deploy/dagster.yaml limits runs with this tag to one at a time (tag_concurrency_limits).
    # `tags`, not `run_tags`: runs launched through GraphQL (the UI) copy only a job's `tags`.
    tags={FULL_SYNC_TAG: "1"},
    op_retry_policy=TRANSIENT_RETRY_POLICY,
)


@dg.job(
    name="clerk_webhook_apply",
    executor_def=dg.in_process_executor,
    description=(
        "Apply pending Clerk webhook events from the inbox and report the tables written "
        "(launched by clerk_webhook_sensor)."
    ),
    tags={WEBHOOK_APPLY_TAG: "1"},
    op_retry_policy=TRANSIENT_RETRY_POLICY,
)
def clerk_webhook_apply() -> None:
    """One op: it drains the inbox and reports organizations, profiles and organization_members
    as materialized when it wrote them."""
    apply_webhook_events()
