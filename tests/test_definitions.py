"""The code location loads, is shaped as documented, and keeps secrets out of runs."""

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from orgsync_pipeline.clerk.emulator import ClerkEmulator
from orgsync_pipeline.definitions import defs
from orgsync_pipeline.resources import ClerkResource, SyncPolicyResource
from orgsync_pipeline.settings import DEFAULT_ROLE_MAP, SettingsError, load_settings

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


RESOURCE_FIELDS = {
    "clerk": {"secret_key", "api_url", "rate_limit", "max_in_flight", "max_attempts", "retry_seconds"},
    "postgres": {"database_url", "auto_migrate", "home"},
    "sync_policy": {"role_map", "max_delete_fraction"},
    "webhook_apply": {"mode", "backstop_seconds", "max_attempts", "batch_size"},
}


def test_resources_expose_every_run_setting_as_a_described_field() -> None:
    """The role map, the delete limit, Clerk's retry budget and the webhook batch size and attempts are
    fields of the code location's resources, each with a description the UI shows, and carry the
    values read from the environment when the code location loaded."""
    resources = defs.get_repository_def().get_top_level_resources()
    assert set(resources) == set(RESOURCE_FIELDS)
    for key, names in RESOURCE_FIELDS.items():
        fields = resources[key].config_schema.as_field().config_type.fields
        assert set(fields) == names, key
        for name, field in fields.items():
            assert field.description, f"{key}.{name} has no description"
    values = {key: resource.config_schema.as_field().default_value for key, resource in resources.items()}
    assert values["sync_policy"]["max_delete_fraction"] == 0.2
    assert json.loads(values["sync_policy"]["role_map"]) == DEFAULT_ROLE_MAP
    assert values["webhook_apply"]["batch_size"] == 500
    assert values["clerk"]["max_attempts"] == 8
    assert values["clerk"]["max_in_flight"] == 32
    assert values["clerk"]["secret_key"] == {"env": "CLERK_SECRET_KEY"}


def test_resources_show_no_secret() -> None:
    """The Clerk key and the database URL are EnvVars: the resources' repr and config schema name the
    variables, never their values."""
    key = os.environ["CLERK_SECRET_KEY"]
    resources = defs.get_repository_def().get_top_level_resources()
    for name in ("clerk", "postgres"):
        shown = repr(defs.resources[name]) + str(resources[name].config_schema.as_field().default_value)
        assert key not in shown and os.environ["DATABASE_URL"] not in shown, shown
    assert "CLERK_SECRET_KEY" in repr(defs.resources["clerk"])
    assert "DATABASE_URL" in repr(defs.resources["postgres"])


def test_a_bad_role_map_on_the_resource_is_the_settings_error() -> None:
    """A role map set on the resource is checked like ORGSYNC_ROLE_MAP, with the same one-line error."""
    with pytest.raises(SettingsError, match="ORGSYNC_ROLE_MAP maps 'org:x' to 'boss'"):
        SyncPolicyResource(role_map='{"org:x": "boss"}').settings()
    assert (
        SyncPolicyResource(max_delete_fraction=0.5).settings(max_delete_fraction=0.9).max_delete_fraction
        == 0.9
    )


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


def test_step_retry_delay_comes_from_the_setting() -> None:
    """Both jobs retry a transient step failure after ORGSYNC_STEP_RETRY_DELAY_SECONDS (the tests set 0.1 s
    before the code location loads; operators get 5 s by default)."""
    assert load_settings({}).step_retry_delay_seconds == 5.0
    for job in ("clerk_full_sync", "clerk_webhook_apply"):
        policy = defs.resolve_job_def(job).op_retry_policy
        assert policy is not None and policy.delay == 0.1, job
    with pytest.raises(SettingsError, match="ORGSYNC_STEP_RETRY_DELAY_SECONDS"):
        load_settings({"ORGSYNC_STEP_RETRY_DELAY_SECONDS": "soon"})


def test_the_clerk_resource_configures_its_client() -> None:
    """The rate limit and the pages in flight set on the resource are the client's."""
    resource = ClerkResource(
        secret_key="sk_test_x", api_url="http://127.0.0.1:9", rate_limit=7, max_in_flight=3
    )
    with resource.client() as client:
        assert client.max_in_flight == 3
        assert client.limiter.limit == 7
