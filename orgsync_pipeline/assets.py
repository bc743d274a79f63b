"""One asset per synced table; each runs the full sync of its table from Clerk."""

import dagster as dg

from orgsync_pipeline.failures import step_failures
from orgsync_pipeline.resources import ClerkResource, PostgresResource
from orgsync_pipeline.settings import load_settings
from orgsync_pipeline.store import sync_runs
from orgsync_pipeline.sync import sync_memberships, sync_organizations, sync_profiles

GROUP = "clerk"
WEBHOOK_GROUP = "clerk_webhooks"
KINDS = {"postgres", "python"}


@dg.asset(key="organizations", group_name=GROUP, kinds=KINDS)
def organizations(
    context: dg.AssetExecutionContext, clerk: ClerkResource, postgres: PostgresResource
) -> dg.MaterializeResult:
    """Clerk organizations in the `organizations` table.

    Lists every organization (`GET /organizations`, 500 per page), validates it, upserts the
    changed rows, quarantines invalid ones in `sync_quarantine`, and soft-deletes (`deleted_at`)
    organizations Clerk confirms are gone, together with their memberships.
    """
    with step_failures(), sync_runs.recorded(postgres.engine(), "organizations", context.run.run_id) as run:
        with clerk.client() as client:
            report = sync_organizations(run.engine, client, load_settings(), context.log)
        run.counts = report.metadata()
    return dg.MaterializeResult(metadata=report.metadata())


@dg.asset(key="profiles", group_name=GROUP, kinds=KINDS)
def profiles(
    context: dg.AssetExecutionContext, clerk: ClerkResource, postgres: PostgresResource
) -> dg.MaterializeResult:
    """Clerk users in the `profiles` table (primary email, names, image).

    Lists every user (`GET /users`, 500 per page), validates, upserts the changed rows,
    quarantines invalid ones, and soft-deletes users Clerk confirms are gone, with their memberships.
    """
    with step_failures(), sync_runs.recorded(postgres.engine(), "profiles", context.run.run_id) as run:
        with clerk.client() as client:
            report = sync_profiles(run.engine, client, load_settings(), context.log)
        run.counts = report.metadata()
    return dg.MaterializeResult(metadata=report.metadata())


@dg.asset(key="organization_members", group_name=GROUP, kinds=KINDS, deps=[organizations, profiles])
def organization_members(
    context: dg.AssetExecutionContext, clerk: ClerkResource, postgres: PostgresResource
) -> dg.MaterializeResult:
    """Clerk organization memberships in the `organization_members` table, with app roles.

    Lists every membership instance-wide (`GET /organization_memberships`), maps Clerk role keys to
    the app's `org_role` (defaults plus `ORGSYNC_ROLE_MAP`; an unmapped role is quarantined), writes
    each membership's organization and a profile stub for users the user listing missed, then
    deletes memberships Clerk confirms are gone.
    """
    table = "organization_members"
    with step_failures(), sync_runs.recorded(postgres.engine(), table, context.run.run_id) as run:
        with clerk.client() as client:
            report = sync_memberships(run.engine, client, load_settings(), context.log)
        run.counts = report.metadata()
    return dg.MaterializeResult(metadata=report.metadata())


full_sync_assets = [organizations, profiles, organization_members]
