"""``orgsync demo`` and ``orgsync dev``: the real pipeline against the built-in Clerk emulator.

The demo never touches a configured ``DATABASE_URL``: it writes sample data, so it uses its own
database (``orgsync_demo``) on the embedded PostgreSQL under ``ORGSYNC_HOME`` (default ``.orgsync``).
Runs are recorded in ``ORGSYNC_HOME/dagster``, the Dagster home ``orgsync dev`` uses too, so the
demo's runs show up in the UI afterwards.
"""

import base64
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from orgsync_pipeline.clerk.emulator import ClerkEmulator
from orgsync_pipeline.lifecycle import embedded_server_running, run_supervised, stop_hint
from orgsync_pipeline.settings import is_set, load_settings
from orgsync_pipeline.store.database import (
    configured_database_url,
    embedded_database_url,
    migrated_engine_for,
)
from orgsync_pipeline.store.schema import organization_members, organizations, profiles, sync_quarantine

if TYPE_CHECKING:  # dagster is imported where it is used: the demo prints its first lines sooner
    import dagster as dg

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

# The code location is named orgsync here, in workspace.yaml and in pyproject's [tool.dagster].
WORKSPACE_YAML = """\
# Written by orgsync dev.
load_from:
  - python_module:
      module_name: orgsync_pipeline.definitions
      location_name: orgsync
      working_directory: {working_directory}
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
        from orgsync_pipeline.failures import run_failure_message

        job = defs.resolve_job_def("clerk_full_sync")
        instance = dg.DagsterInstance.get()
        quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}

        out(f"Clerk emulator at {emulator.api_url}; embedded PostgreSQL database {DEMO_DATABASE!r}\n")
        result = job.execute_in_process(instance=instance, run_config=quiet, raise_on_error=False)
        if not result.success:
            out(f"The full sync failed: {run_failure_message(result)}\nSee the run in `orgsync dev`.")
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
            out(f"The second full sync failed: {run_failure_message(result)}")
            return 1
        for event in result.get_asset_materialization_events():
            metadata = {key: value.value for key, value in event.materialization.metadata.items()}
            out(
                f"  {_asset_name(event.asset_key):<21} fetched {metadata['rows_fetched']:>3}, "
                f"inserted {metadata['rows_inserted']}, updated {metadata['rows_updated']}, "
                f"deleted {metadata['rows_deleted']}, quarantined {metadata['rows_quarantined']}"
            )
        _print_tables(out, database_url)

        if not _demo_webhook(emulator, database_url, instance, out):
            return 1
        if not _demo_on_demand(emulator, out):
            return 1
    out("\nNext: `orgsync dev` opens the Dagster UI (http://127.0.0.1:3000) with these runs.")
    return 0


def _asset_name(key: "dg.AssetKey | None") -> str:
    return key.to_user_string() if key is not None else "?"


def _demo_webhook(emulator: ClerkEmulator, database_url: str, instance: Any, out: Print) -> bool:
    """A change in Clerk arriving by webhook: signed delivery → receiver → inbox → inline apply, then
    the sensor reporting the receiver's writes to Dagster."""
    import dagster as dg

    from orgsync_pipeline.resources import PostgresResource, WebhookApplyResource
    from orgsync_pipeline.sensors import webhook_sensor
    from orgsync_pipeline.webhooks import create_app, serve_in_thread

    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    os.environ["CLERK_WEBHOOK_SECRET"] = secret
    with serve_in_thread(create_app()) as receiver_url:
        emulator.add_webhook_endpoint(f"{receiver_url}/webhooks/clerk", secret)
        org = list(emulator.organizations.values())[1]
        newcomer = emulator.create_user("Grace", "Hopper", "grace.hopper@example.com")
        changed = time.monotonic()
        emulator.create_membership(org["id"], newcomer["id"], role="org:admin")
        out(
            f"\nIn Clerk: Grace Hopper joins {org['name']!r} as admin; "
            f"Clerk sends the webhooks to {receiver_url} …"
        )
        visible = _wait_for_membership(database_url, org["id"], newcomer["id"])
        if visible is None or emulator.failed_deliveries:
            out("The receiver did not accept or apply the webhooks.")
            return False
        out(
            f"  the receiver verified, stored and applied them itself (inline): the membership was "
            f"visible {1000 * (visible - changed):.0f} ms after the change in Clerk"
        )

    # Under `orgsync dev` the daemon evaluates the sensor every few seconds; here we do it once and
    # record what it reports (the receiver's writes, as materializations) in the demo's instance.
    resources = {
        "postgres": PostgresResource(database_url=database_url),
        "webhook_apply": WebhookApplyResource(mode=load_settings().webhook_apply),
    }
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        tick = webhook_sensor()(context)
    events = list(getattr(tick, "asset_events", None) or [])
    for event in events:
        instance.report_runless_asset_event(event)
    tables = ", ".join(sorted({event.asset_key.to_user_string() for event in events}))
    out(f"  clerk_webhook_sensor reported the receiver's writes to Dagster as materializations of {tables}")
    _print_tables(out, database_url)
    return True


def _demo_on_demand(emulator: ClerkEmulator, out: Print) -> bool:
    """The app's on-demand sync: a session token the emulator minted, POST /sync/me and
    /sync/organizations/{id} on the receiver's port, and a token for another organization refused."""
    import httpx

    from orgsync_pipeline.webhooks import create_app, serve_in_thread

    os.environ.setdefault("CLERK_WEBHOOK_SECRET", "whsec_" + base64.b64encode(os.urandom(24)).decode())
    org, other = list(emulator.organizations.values())[2:4]
    member = next(m for m in emulator.memberships.values() if m["organization"]["id"] == org["id"])
    user_id = member["public_user_data"]["user_id"]
    out(f"\nOn-demand sync: a signed-in member of {org['name']!r} (session token minted by the emulator)")
    with serve_in_thread(create_app()) as receiver_url:
        for path, token in (
            ("/sync/me", emulator.session_token(user_id, org["id"])),
            (f"/sync/organizations/{org['id']}", emulator.session_token(user_id, org["id"])),
            (f"/sync/organizations/{org['id']}", emulator.session_token(user_id, other["id"])),
        ):
            response = httpx.post(
                receiver_url + path, headers={"Authorization": f"Bearer {token}"}, timeout=60
            )
            body = response.json()
            if response.status_code == 200:
                members = body["counts"]["organization_members"]
                out(
                    f"  POST {path:<40} 200 in {body['elapsed_ms']:.0f} ms: {members['fetched']} memberships "
                    f"fetched, {members['inserted']} inserted, {members['updated']} updated, "
                    f"{members['deleted']} deleted"
                )
            elif response.status_code == 403:
                out(f"  POST {path:<40} 403 with a token for {other['name']!r}: {body['error']}")
            else:
                out(f"  POST {path} answered {response.status_code}: {body.get('error')}")
                return False
    return True


def _wait_for_membership(database_url: str, org_id: str, user_id: str, timeout: float = 30.0) -> float | None:
    """When (``time.monotonic()``) the membership became visible, or None after ``timeout``."""
    query = sa.select(organization_members.c.id).where(
        organization_members.c.organization_id == org_id, organization_members.c.user_id == user_id
    )
    deadline = time.monotonic() + timeout
    with migrated_engine_for(database_url).connect() as conn:
        while time.monotonic() < deadline:
            if conn.execute(query).first() is not None:
                return time.monotonic()
            conn.rollback()
            time.sleep(0.005)
    return None


def _print_tables(out: Print, database_url: str) -> None:
    engine = migrated_engine_for(database_url)
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


def run_dev(dagster_args: list[str], out: Print = print, *, verbose: bool = False) -> int:
    """dagster dev on orgsync's code location, with the demo's Dagster home.

    Without CLERK_SECRET_KEY it runs against the emulator and the demo database, so a newcomer
    can materialize assets from the UI; with it, against the configured Clerk and database.
    dagster dev runs in its own session and is stopped, with its whole process group, on Ctrl-C.
    """
    settings = load_settings()
    home = dagster_home(settings.home)
    command = dev_command_line(home, dagster_args, verbose=verbose)
    if is_set("CLERK_SECRET_KEY"):
        os.environ["DAGSTER_HOME"] = str(home)
        # Started here, the embedded server (if used) stays out of dagster dev's process group.
        configured_database_url(settings)
        out(_dev_banner(dagster_args))
        return _supervise(command, settings.home, out)
    with demo_environment() as (emulator, _):
        out(
            f"CLERK_SECRET_KEY is not set: using the Clerk emulator at {emulator.api_url} "
            "and the demo database."
        )
        out(_dev_banner(dagster_args))
        return _supervise(command, settings.home, out)


def dev_command_line(home: Path, dagster_args: list[str], *, verbose: bool = False) -> list[str]:
    """The dagster dev command: a workspace naming the code location orgsync, and the services'
    INFO logs (a sensor line every few seconds) only when verbose."""
    workspace = home / "workspace.yaml"
    workspace.write_text(WORKSPACE_YAML.format(working_directory=json.dumps(str(Path.cwd()))))
    quiet = [] if verbose or "--log-level" in dagster_args else ["--log-level", "warning"]
    return [sys.executable, "-m", "dagster", "dev", "-w", str(workspace), *quiet, *dagster_args]


def _dev_banner(dagster_args: list[str]) -> str:
    host, port = "127.0.0.1", "3000"
    for flags, value in zip(dagster_args, [*dagster_args[1:], ""], strict=True):
        if flags in ("-p", "--port", "--dagit-port"):
            port = value
        elif flags in ("-h", "--host", "--dagit-host"):
            host = value
    return f"Dagster UI at http://{host}:{port} (code location orgsync); Ctrl-C stops it."


def _supervise(command: list[str], home: Path, out: Print) -> int:
    try:
        return run_supervised(command)
    finally:
        if embedded_server_running(home):
            out(stop_hint(home))
