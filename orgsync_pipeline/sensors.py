"""``clerk_webhook_sensor``: backstop for the receivers' inline apply, and witness of their writes.

Backstop: it launches ``clerk_webhook_apply`` for pending events the receivers left behind (pending
longer than the ``webhook_apply`` resource's ``backstop_seconds`` in inline mode; at once in sensor
mode) and for retries that are due. Witness: every tick it reports the writes made outside runs
(inline apply, on-demand syncs), read from ``write_log``, as materializations of the tables they
touched. The sensor's interval is fixed when the code location loads (``webhook_sensor``).
"""

import json
from datetime import timedelta
from typing import Any

import dagster as dg

from orgsync_pipeline.jobs import WEBHOOK_APPLY_JOB
from orgsync_pipeline.resources import PostgresResource, WebhookApplyResource
from orgsync_pipeline.settings import DEFAULT_WEBHOOK_SENSOR_INTERVAL, Settings
from orgsync_pipeline.store import write_log
from orgsync_pipeline.store.database import schema_is_current
from orgsync_pipeline.store.inbox import InboxSummary, claimable_summary

IN_PROGRESS = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]
CURSOR_KEY = "write_log_batch"
PATH_NAMES = {"webhook": "by the receivers' inline apply", "on_demand": "by on-demand syncs"}
SENSOR_NAME = "clerk_webhook_sensor"


def webhook_sensor(
    minimum_interval_seconds: int = DEFAULT_WEBHOOK_SENSOR_INTERVAL,
) -> dg.SensorDefinition:
    """``clerk_webhook_sensor``, evaluated every ``minimum_interval_seconds``: ``definitions`` takes it
    from ``definition_settings().webhook_sensor_interval`` (ORGSYNC_WEBHOOK_SENSOR_INTERVAL)."""
    return dg.sensor(
        name=SENSOR_NAME,
        job_name=WEBHOOK_APPLY_JOB,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "Launches clerk_webhook_apply for webhook events the receivers left pending (or every "
            "pending event when the webhook_apply resource's mode is sensor) and for due retries, one "
            "run at a time; reports the writes made outside runs (inline apply, on-demand syncs) as "
            "materializations."
        ),
    )(evaluate_webhook_sensor)


def evaluate_webhook_sensor(
    context: dg.SensorEvaluationContext, postgres: PostgresResource, webhook_apply: WebhookApplyResource
) -> dg.SensorResult | dg.SkipReason:
    """One tick: two cheap queries; the inbox says what is left to apply, the write log (with the
    cursor naming the last batch reported) what is left to report. The mode and the backstop delay
    come from the ``webhook_apply`` resource."""
    settings = webhook_apply.settings()
    previous = parse_cursor(context.cursor)
    engine = postgres.engine()
    if not schema_is_current(engine):  # a sensor never runs DDL
        return dg.SkipReason("the database is not migrated yet: run `orgsync migrate` (or any orgsync job)")
    with engine.begin() as conn:
        # The daemon stored the previous tick's cursor, so that tick's report reached Dagster.
        write_log.confirm_reported(conn, previous)
        batch = write_log.take_unreported(conn)
        summary = claimable_summary(conn, pending_for=_grace(settings))
    asset_events = [materialization(report) for report in batch.reports]
    run_request, skip_reason = _backstop(context, summary, settings)
    if run_request is None and not asset_events:
        return dg.SkipReason(skip_reason)
    return dg.SensorResult(
        run_requests=[run_request] if run_request else [],
        skip_reason=None if run_request else skip_reason,
        asset_events=asset_events,
        cursor=format_cursor(batch.cursor if batch.cursor is not None else previous),
    )


def _grace(settings: Settings) -> timedelta | None:
    if settings.webhook_apply == "sensor":
        return None
    return timedelta(seconds=settings.webhook_backstop_seconds)


def _backstop(
    context: dg.SensorEvaluationContext, summary: InboxSummary, settings: Settings
) -> tuple[dg.RunRequest | None, str]:
    if not summary.claimable:
        if settings.webhook_apply == "sensor":
            return None, "no pending webhook events"
        return None, (
            f"no webhook event pending for over {settings.webhook_backstop_seconds:g} s and no retry due "
            "(the receivers apply events themselves)"
        )
    runs = context.instance.get_run_records(dg.RunsFilter(job_name=WEBHOOK_APPLY_JOB), limit=1)
    latest = runs[0].dagster_run if runs else None
    if latest is not None and latest.status in IN_PROGRESS:
        return None, f"run {latest.run_id} is still applying events"
    # The key names the batch and the run before it, so a batch launches once, yet is launched
    # again after a run that failed without touching it (its key would otherwise block forever).
    run_key = f"inbox-{summary.max_id}-{summary.attempts}-after-{latest.run_id if latest else 'none'}"
    tags = {"orgsync/pending_events": str(summary.claimable), "orgsync/apply_mode": settings.webhook_apply}
    return dg.RunRequest(run_key=run_key, tags=tags), ""


def materialization(report: write_log.WriteReport) -> dg.AssetMaterialization:
    """One table's writes through one path since the last tick, as a materialization."""
    metadata: dict[str, dg.MetadataValue[Any] | str | int | float] = {
        "path": report.path,
        "rows_written": report.rows,
        "writes": report.writes,
        "last_written_at": dg.MetadataValue.timestamp(report.last_written_at),
        "write_log_ids": f"{report.first_id}-{report.last_id}",
    }
    if report.lag_seconds_max is not None:
        metadata["lag_seconds_max"] = round(report.lag_seconds_max, 3)
        metadata["lag_seconds_avg"] = round(report.lag_seconds_avg or 0.0, 3)
    return dg.AssetMaterialization(
        asset_key=report.table,
        description=f"{report.rows} rows written {PATH_NAMES.get(report.path, report.path)}",
        metadata=metadata,
    )


def parse_cursor(cursor: str | None) -> int | None:
    """The write-log batch the previous tick reported (None before the first, or for an older
    cursor format)."""
    try:
        value = json.loads(cursor) if cursor else None
    except ValueError:
        return None
    batch = value.get(CURSOR_KEY) if isinstance(value, dict) else None
    return batch if isinstance(batch, int) and not isinstance(batch, bool) else None


def format_cursor(batch: int | None) -> str:
    """The cursor naming the write-log batch reported by this tick."""
    return json.dumps({CURSOR_KEY: batch})
