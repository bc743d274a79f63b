"""The code location loads, is shaped as documented, and keeps secrets out of runs."""

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from orgsync_pipeline.clerk.emulator import ClerkEmulator
from orgsync_pipeline.definitions import defs

ROOT = Path(__file__).resolve().parent.parent


def test_definitions_load() -> None:
    """`Definitions.validate_loadable` passes (the unit form of `dagster definitions validate`)."""
    dg.Definitions.validate_loadable(defs)


def test_dagster_cli_validates_the_code_location() -> None:
    """`dagster definitions validate` passes through pyproject.toml's [tool.dagster] and workspace.yaml."""
    for target in ([], ["-w", "workspace.yaml"]):
        completed = subprocess.run(
            [sys.executable, "-m", "dagster", "definitions", "validate", *target],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert completed.returncode == 0, completed.stderr[-2000:]


def test_assets_job_and_schedule() -> None:
    """One asset per synced table in group `clerk` and the inbox in `clerk_webhooks`, each with a
    description and kinds; the hourly schedule runs `clerk_full_sync` and is on by default."""
    specs = {spec.key.to_user_string(): spec for spec in defs.resolve_all_asset_specs()}
    assert {key: spec.group_name for key, spec in specs.items()} == {
        "organizations": "clerk",
        "profiles": "clerk",
        "organization_members": "clerk",
        "webhook_inbox": "clerk_webhooks",
    }
    for spec in specs.values():
        assert spec.description
        assert "postgres" in spec.kinds
    schedule = defs.resolve_schedule_def("clerk_full_sync_schedule")
    assert schedule.job_name == "clerk_full_sync"
    assert schedule.cron_schedule == "0 * * * *"
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING


@pytest.mark.parametrize("table", ["organizations", "profiles", "organization_members"])
def test_synced_tables_are_described_in_the_catalog(table: str) -> None:
    """Each synced table carries its owner, a freshness expectation and its column schema."""
    node = defs.resolve_asset_graph().get(dg.AssetKey(table))
    assert node.owners == ["team:data-platform"]
    assert node.freshness_policy is not None
    columns = {column.name for column in node.metadata["dagster/column_schema"].columns}
    assert {"id", "synced_at"} <= columns


def test_full_sync_cron_is_configurable() -> None:
    """ORGSYNC_FULL_SYNC_CRON overrides the schedule's cron."""
    env = {**os.environ, "ORGSYNC_FULL_SYNC_CRON": "*/15 * * * *"}
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            "from orgsync_pipeline.definitions import defs;"
            "print(defs.resolve_schedule_def('clerk_full_sync_schedule').cron_schedule)",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.stdout.strip() == "*/15 * * * *", completed.stderr[-2000:]


def test_secrets_stay_out_of_runs(
    emulator: ClerkEmulator, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Neither the Clerk key nor the database password appears in event logs, metadata or run config."""
    password = "db-password-that-must-not-leak"
    with_password = sa.make_url(database_url).set(password=password).render_as_string(hide_password=False)
    monkeypatch.setenv("DATABASE_URL", with_password)  # trust auth ignores it; the run still succeeds
    emulator.seed_sample()
    instance = dg.DagsterInstance.ephemeral()

    result = defs.resolve_job_def("clerk_full_sync").execute_in_process(instance=instance)

    assert result.success
    run = instance.get_run_by_id(result.run_id)
    recorded = "\n".join(
        [str(run.run_config), str(run.tags)] + [str(entry) for entry in instance.all_logs(result.run_id)]
    )
    assert emulator.secret_key not in recorded
    assert password not in recorded
