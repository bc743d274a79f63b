"""One asset per synced table; each runs the full sync of its table from Clerk."""

from collections.abc import Sequence
from datetime import timedelta

import dagster as dg
import sqlalchemy as sa
from pydantic import Field

from orgsync_pipeline.failures import step_failures
from orgsync_pipeline.resources import ClerkResource, PostgresResource, SyncPolicyResource
from orgsync_pipeline.store import schema, sync_runs
from orgsync_pipeline.sync import full_sync

GROUP = "clerk"
WEBHOOK_GROUP = "clerk_webhooks"
KINDS = {"postgres", "python"}
OWNERS = ["team:data-platform"]
TAGS = {"domain": "identity", "source": "clerk"}
# Fits the hourly default schedule: a table not synced for two hours is late (one missed run warns).
FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(hours=2), warn_window=timedelta(minutes=75))


class FullSyncConfig(dg.Config):
    """Choices for one full-sync run, set in the launchpad."""

    max_delete_fraction: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="For this run only: the largest share of the table this sync may delete (0 to 1). "
        "Unset: the sync_policy resource's max_delete_fraction (ORGSYNC_MAX_DELETE_FRACTION, default "
        "0.2). Raise it once when Clerk really lost rows.",
    )


def _column_schema(table: sa.Table) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(column.name, str(column.type).lower(), description=column.comment)
            for column in table.columns
        ]
    )


def full_sync_asset(
    table: sa.Table, description: str, deps: Sequence[dg.AssetsDefinition] = ()
) -> dg.AssetsDefinition:
    """The asset of one synced table: it runs that table's full sync (:func:`sync.full_sync`), recorded
    in ``sync_runs``, and carries the group, owners, tags, freshness and column schema all tables share."""

    @dg.asset(
        name=table.name,
        description=description,
        group_name=GROUP,
        kinds=KINDS,
        owners=OWNERS,
        tags=TAGS,
        freshness_policy=FRESHNESS,
        metadata={"dagster/column_schema": _column_schema(table), "dagster/table_name": table.name},
        deps=deps,
    )
    def sync_table(
        context: dg.AssetExecutionContext,
        config: FullSyncConfig,
        clerk: ClerkResource,
        postgres: PostgresResource,
        sync_policy: SyncPolicyResource,
    ) -> dg.MaterializeResult[None]:
        # Failures become one-line step failures; the run's config may raise the delete limit.
        with (
            step_failures(),
            sync_runs.recorded(postgres.migrated_engine(), table.name, context.run.run_id) as run,
        ):
            settings = sync_policy.settings(max_delete_fraction=config.max_delete_fraction)
            with clerk.client() as client:
                report = full_sync(table.name, run.engine, client, settings, context.log)
            run.counts = report.metadata()
            with run.engine.connect() as conn:
                rows = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
        return dg.MaterializeResult(
            metadata={**report.metadata(), "dagster/row_count": rows, "dagster/table_name": table.name}
        )

    return sync_table


organizations = full_sync_asset(
    schema.organizations,
    """Clerk organizations in the `organizations` table.

Lists every organization (`GET /organizations`, 500 per page), validates it, upserts the changed rows,
quarantines invalid ones in `sync_quarantine`, and soft-deletes (`deleted_at`) organizations Clerk
confirms are gone, together with their memberships.""",
)
profiles = full_sync_asset(
    schema.profiles,
    """Clerk users in the `profiles` table (primary email, names, image).

Lists every user (`GET /users`, 500 per page), validates, upserts the changed rows, quarantines invalid
ones, and soft-deletes users Clerk confirms are gone, with their memberships.""",
)
organization_members = full_sync_asset(
    schema.organization_members,
    """Clerk organization memberships in the `organization_members` table, with app roles.

Lists every membership instance-wide (`GET /organization_memberships`), maps Clerk role keys to the
app's `org_role` (defaults plus the `sync_policy` resource's `role_map`, ORGSYNC_ROLE_MAP; an unmapped
role is quarantined), writes each membership's organization and a profile stub for users the user
listing missed, then deletes memberships Clerk confirms are gone.""",
    deps=[organizations, profiles],
)

full_sync_assets = [organizations, profiles, organization_members]
