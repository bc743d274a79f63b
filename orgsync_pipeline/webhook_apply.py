"""The op of ``clerk_webhook_apply``: drain the webhook inbox and report the tables it wrote.

The tables (``organizations``, ``profiles``, ``organization_members``) are the full sync's assets;
Dagster allows one definition per asset key, so this op reports materializations of them for each
table it wrote, instead of being a second asset of the same keys. The inbox itself is an external
asset (``webhook_inbox``): each run records an observation of it with the run's counts and lags,
and the evaluation of its ``no_dead_events`` check.
"""

from collections.abc import Iterator
from typing import Any

import dagster as dg

from orgsync_pipeline.assets import WEBHOOK_GROUP
from orgsync_pipeline.checks import dead_events_evaluation
from orgsync_pipeline.events import apply_pending_events
from orgsync_pipeline.failures import step_failures
from orgsync_pipeline.resources import PostgresResource, SyncPolicyResource, WebhookApplyResource

WEBHOOK_TABLES = ("organizations", "profiles", "organization_members")

webhook_inbox = dg.AssetSpec(
    "webhook_inbox",
    group_name=WEBHOOK_GROUP,
    kinds={"postgres"},
    description=(
        "Clerk webhook events in the `webhook_inbox` table, committed by the receiver before it answers. "
        "The receivers apply them inline (ORGSYNC_WEBHOOK_APPLY=inline, the default); "
        "`clerk_webhook_apply` runs, launched by `clerk_webhook_sensor`, apply what they leave (or "
        "everything, in sensor mode). Each run observes it with its counts and lags."
    ),
)


@dg.op(
    name="apply_webhook_events",
    description=(
        "Apply pending webhook events in Clerk's order through the same validation and write path as "
        "the full sync (newer wins; deletions are final for older data). A transient failure is "
        "retried with backoff and is `dead` after the webhook_apply resource's max_attempts; an event "
        "that can never apply is quarantined at once."
    ),
)
def apply_webhook_events(
    context: dg.OpExecutionContext,
    postgres: PostgresResource,
    sync_policy: SyncPolicyResource,
    webhook_apply: WebhookApplyResource,
) -> Iterator[Any]:
    """Drain the inbox; report each table written, observe the inbox, evaluate its dead-event check."""
    engine = postgres.migrated_engine()
    with step_failures():
        report = apply_pending_events(engine, webhook_apply.settings(sync_policy), context.log)
    summary = report.metadata()
    lags = {key: value for key, value in summary.items() if key.startswith("lag_seconds")}
    for table in WEBHOOK_TABLES:
        if report.written[table]:
            yield dg.AssetMaterialization(
                asset_key=table,
                description=f"{report.written[table]} rows written from webhook events",
                metadata={"path": "webhook_apply_run", "rows_written": report.written[table], **lags},
            )
    yield dg.AssetObservation(asset_key="webhook_inbox", metadata=summary)
    # dagster's UserEvent annotation omits AssetCheckEvaluation, which log_event handles at runtime.
    context.log_event(dead_events_evaluation(engine))  # type: ignore[arg-type]  # dagster stub too narrow
    yield dg.Output(None)
