"""Jobs: the full sync of every Clerk table, and the apply of webhook events."""

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from orgsync_pipeline.assets import GROUP
from orgsync_pipeline.webhook_apply import apply_webhook_events

# Run tags the run queue limits (deploy/dagster.yaml); the daemon never starts two runs carrying one.
FULL_SYNC_TAG = "orgsync/full-sync"
WEBHOOK_APPLY_TAG = "orgsync/webhook-apply"


# Transient causes only (Clerk unavailable, a lost database connection, a deadlock past the apply
# layer's own retries): a step failing for any other reason raises dg.Failure(allow_retries=False)
# (orgsync_pipeline.failures.step_failures), so a refused deletion is never tried again.
def transient_retry_policy(delay_seconds: float) -> dg.RetryPolicy:
    """Two more attempts of a step that failed for a transient cause, after about ``delay_seconds``
    and twice that (ORGSYNC_STEP_RETRY_DELAY_SECONDS)."""
    return dg.RetryPolicy(
        max_retries=2, delay=delay_seconds, backoff=dg.Backoff.EXPONENTIAL, jitter=dg.Jitter.PLUS_MINUS
    )


FULL_SYNC_JOB = "clerk_full_sync"
WEBHOOK_APPLY_JOB = "clerk_webhook_apply"


def full_sync_job(retry_delay_seconds: float) -> UnresolvedAssetJobDefinition:
    """``clerk_full_sync``: every table of the ``clerk`` group, in-process (the three steps run one after
    another anyway; in-process saves the ~10 s of subprocess start-up per run)."""
    return dg.define_asset_job(
        FULL_SYNC_JOB,
        selection=dg.AssetSelection.groups(GROUP),
        executor_def=dg.in_process_executor,
        description="List Clerk's organizations, users and memberships and reconcile Postgres with them.",
        # deploy/dagster.yaml limits runs with this tag to one at a time (tag_concurrency_limits).
        # `tags`, not `run_tags`: runs launched through GraphQL (the UI) copy only a job's `tags`.
        tags={FULL_SYNC_TAG: "1"},
        op_retry_policy=transient_retry_policy(retry_delay_seconds),
    )


def webhook_apply_job(retry_delay_seconds: float) -> dg.JobDefinition:
    """``clerk_webhook_apply``: one op that drains the inbox and reports the tables it wrote."""

    @dg.job(
        name=WEBHOOK_APPLY_JOB,
        executor_def=dg.in_process_executor,
        description=(
            "Apply pending Clerk webhook events from the inbox and report the tables written "
            "(launched by clerk_webhook_sensor)."
        ),
        tags={WEBHOOK_APPLY_TAG: "1"},
        op_retry_policy=transient_retry_policy(retry_delay_seconds),
    )
    def clerk_webhook_apply() -> None:
        """One op: it drains the inbox and reports organizations, profiles and organization_members
        as materialized when it wrote them."""
        apply_webhook_events()

    return clerk_webhook_apply
