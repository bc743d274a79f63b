"""``orgsync demo`` and ``orgsync dev``: the real pipeline against the built-in Clerk emulator.

The demo never touches a configured ``DATABASE_URL``: it writes sample data, so it uses its own
database (``orgsync_demo``) on the embedded PostgreSQL under ``ORGSYNC_HOME`` (default ``.orgsync``).
Runs are recorded in ``ORGSYNC_HOME/dagster``, the Dagster home ``orgsync dev`` uses too, so the
demo's runs show up in the UI afterwards.
"""

import base64
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from orgsync_pipeline.clerk.emulator import ClerkEmulator
from orgsync_pipeline.settings import is_set, load_settings
from orgsync_pipeline.store.database import embedded_database_url, engine_for
from orgsync_pipeline.store.schema import organization_members, organizations, profiles, sync_quarantine

DEMO_DATABASE = "orgsync_demo"
# Fixed seed: the same sample ids every time, so repeated demos update rows instead of replacing them.
DEMO_SEED = 7

DAGSTER_YAML = """\
# Written by orgsync: the Dagster instance for `orgsync demo` and `orgsync dev`.
# Runs launch as soon as a sensor asks (no queue): the queued coordinator's extra hop costs
# seconds of webhook freshness, and clerk_webhook_apply excludes itself with a Postgres lock.
run_coordinator:
  module: dagster.core.run_coordinator
  class: DefaultRunCoordinator
telemetry:
  enabled: false
"""

Print = Callable[[str], None]


def dagster_home(home: Path) -> Path:
    """``home/dagster``, created with a ``dagster.yaml`` on first use."""
    path = home / "dagster"
    path.mkdir(parents=True, exist_ok=True)
    config = path / "dagster.yaml"
    if not config.exists():
        config.write_text(DAGSTER_YAML)
    return path


@contextmanager
def demo_environment() -> Iterator[tuple[ClerkEmulator, str]]:
    """A seeded emulator and the demo database's URL, with this process's environment (which the
    Dagster resources read) pointed at both."""
    settings = load_settings()
    database_url = embedded_database_url(settings.home, database=DEMO_DATABASE)
    with ClerkEmulator(id_seed=DEMO_SEED) as emulator:
        emulator.seed_sample(organizations=6, users=15, memberships_per_org=4, seed=DEMO_SEED)
        os.environ.update(
            CLERK_SECRET_KEY=emulator.secret_key,
            CLERK_API_URL=emulator.api_url,
            DATABASE_URL=database_url,
            DAGSTER_HOME=str(dagster_home(settings.home)),
        )
        yield emulator, database_url


def run_demo(out: Print = print) -> int:
    """Run ``clerk_full_sync`` against the emulator, change Clerk, run it again; print what landed."""
    with demo_environment() as (emulator, database_url):
        import dagster as dg

        from orgsync_pipeline.definitions import defs

        job = defs.resolve_job_def("clerk_full_sync")
        instance = dg.DagsterInstance.get()
        quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

        out(f"Clerk emulator at {emulator.api_url}; embedded PostgreSQL database {DEMO_DATABASE!r}\n")
        result = job.execute_in_process(instance=instance, run_config=quiet, raise_on_error=False)
        if not result.success:
            out("The full sync failed; see the run in `orgsync dev`.")
            return 1
        out(f"Full sync (run {result.run_id[:8]}) landed:")
        _print_tables(out, database_url)

        org = next(iter(emulator.organizations.values()))
        member = next(m for m in emulator.memberships.values() if m["organization"]["id"] == org["id"])
        emulator.update_organization(org["id"], name=f"{org['name']} (renamed)")
        emulator.delete_membership(org["id"], member["public_user_data"]["user_id"])
        out(f"\nIn Clerk: renamed {org['name']!r}; removed one of its members. Syncing again…")
        result = job.execute_in_process(instance=instance, run_config=quiet, raise_on_error=False)
        if not result.success:
            out("The second full sync failed; see the run in `orgsync dev`.")
            return 1
        for event in result.get_asset_materialization_events():
            metadata = {key: value.value for key, value in event.materialization.metadata.items()}
            out(
                f"  {event.asset_key.to_user_string():<21} fetched {metadata['rows_fetched']:>3}, "
                f"inserted {metadata['rows_inserted']}, updated {metadata['rows_updated']}, "
                f"deleted {metadata['rows_deleted']}, quarantined {metadata['rows_quarantined']}"
            )
        _print_tables(out, database_url)

        if not _demo_webhook(emulator, database_url, defs, instance, quiet, out):
            return 1
    out("\nNext: `orgsync dev` opens the Dagster UI (http://127.0.0.1:3000) with these runs.")
    return 0


def _demo_webhook(
    emulator: ClerkEmulator, database_url: str, defs: Any, instance: Any, run_config: dict, out: Print
) -> bool:
    """A change in Clerk arriving by webhook: signed delivery → receiver → inbox → sensor → apply run."""
    import dagster as dg

    from orgsync_pipeline.resources import PostgresResource
    from orgsync_pipeline.sensors import clerk_webhook_sensor
    from orgsync_pipeline.webhooks import create_app, serve_in_thread

    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    os.environ["CLERK_WEBHOOK_SECRET"] = secret
    with serve_in_thread(create_app()) as receiver_url:
        emulator.add_webhook_endpoint(f"{receiver_url}/webhooks/clerk", secret)
        org = list(emulator.organizations.values())[1]
        newcomer = emulator.create_user("Grace", "Hopper", "grace.hopper@example.com")
        emulator.create_membership(org["id"], newcomer["id"], role="org:admin")
        out(
            f"\nIn Clerk: Grace Hopper joins {org['name']!r} as admin; "
            f"Clerk sends the webhooks to {receiver_url} …"
        )
        if not emulator.wait_for_deliveries(timeout=30) or emulator.failed_deliveries:
            out("The receiver did not accept the webhooks.")
            return False
        out(f"  the receiver verified and stored {len(emulator.webhook_events)} events in webhook_inbox")

    # Under `orgsync dev` the daemon evaluates the sensor every few seconds; here we do it once.
    resources = {"postgres": PostgresResource(database_url=database_url)}
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        request = clerk_webhook_sensor(context).run_requests[0]
    result = defs.resolve_job_def("clerk_webhook_apply").execute_in_process(
        instance=instance, run_config=run_config, tags=request.tags, raise_on_error=False
    )
    if not result.success:
        out("The webhook apply run failed; see it in `orgsync dev`.")
        return False
    (event,) = result.get_asset_materialization_events()
    metadata = {key: value.value for key, value in event.materialization.metadata.items()}
    out(
        f"  clerk_webhook_sensor launched clerk_webhook_apply (run {result.run_id[:8]}): "
        f"{metadata['events_applied']} events applied, {metadata['lag_seconds_max']:.1f} s after receipt"
    )
    _print_tables(out, database_url)
    return True


def _print_tables(out: Print, database_url: str) -> None:
    engine = engine_for(database_url)
    members = (
        sa.select(
            organizations.c.name, organizations.c.slug, sa.func.count(organization_members.c.id).label("n")
        )
        .select_from(organizations.outerjoin(organization_members))
        .where(organizations.c.deleted_at.is_(None))
        .group_by(organizations.c.id)
        .order_by(organizations.c.name)
    )
    live = {
        organizations.name: sa.select(sa.func.count()).where(organizations.c.deleted_at.is_(None)),
        profiles.name: sa.select(sa.func.count()).where(profiles.c.deleted_at.is_(None)),
        organization_members.name: sa.select(sa.func.count()).select_from(organization_members),
        sync_quarantine.name: sa.select(sa.func.count()).select_from(sync_quarantine),
    }
    with engine.connect() as conn:
        counts = {name: conn.execute(query).scalar_one() for name, query in live.items()}
        rows = conn.execute(members).all()
    out("  live rows: " + ", ".join(f"{name} {count}" for name, count in counts.items()))
    for row in rows:
        out(f"    {row.name:<28} {row.slug or '':<24} {row.n} members")


def run_dev(dagster_args: list[str], out: Print = print) -> int:
    """``dagster dev`` on orgsync's code location, with the demo's Dagster home.

    Without ``CLERK_SECRET_KEY`` it runs against the emulator and the demo database, so a newcomer
    can materialize assets from the UI; with it, against the configured Clerk and database.
    """
    command = [sys.executable, "-m", "dagster", "dev", "-m", "orgsync_pipeline.definitions", *dagster_args]
    if is_set("CLERK_SECRET_KEY"):
        os.environ["DAGSTER_HOME"] = str(dagster_home(load_settings().home))
        return subprocess.call(command)
    with demo_environment() as (emulator, _):
        out(
            f"CLERK_SECRET_KEY is not set: using the Clerk emulator at {emulator.api_url} "
            "and the demo database."
        )
        return subprocess.call(command)
