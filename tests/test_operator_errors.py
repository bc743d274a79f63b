"""Expected failures, as an operator meets them: the CLI prints one or two lines naming the variable or
the cause, exits with its documented code, shows no traceback and no secret; a Dagster step fails with
the same message as its dg.Failure description and records the failure in sync_runs."""

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from orgsync_pipeline import exit_codes
from orgsync_pipeline.clerk.emulator import ClerkEmulator
from orgsync_pipeline.definitions import defs
from orgsync_pipeline.failures import redact
from orgsync_pipeline.store.sync_runs import sync_runs
from tests.support import fast_clerk_retries

ORGSYNC = [sys.executable, "-m", "orgsync_pipeline.cli"]
PASSWORD = "hunter2-db-pass"
CLERK_KEY = "sk_live_notthereallkey0123456789"
WEBHOOK_SECRET = "whsec_c2VjcmV0LXNpZ25pbmcta2V5LTAxMjM0NTY3"
SECRETS = (PASSWORD, CLERK_KEY, WEBHOOK_SECRET, WEBHOOK_SECRET.removeprefix("whsec_"))


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """No orgsync configuration at all, a private ORGSYNC_HOME, and a secret Clerk key set."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLERK_", "DATABASE_URL", "ORGSYNC_"))}
    return {**env, "ORGSYNC_HOME": str(tmp_path / "home"), "CLERK_SECRET_KEY": CLERK_KEY}


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ORGSYNC, *args], env=env, capture_output=True, text=True, timeout=120)


def assert_operator_message(completed: subprocess.CompletedProcess[str], code: int, *names: str) -> None:
    """Exit code, at most two lines on stderr, no traceback, every name mentioned, no secret."""
    stderr = completed.stderr.strip()
    assert completed.returncode == code, completed.stderr
    assert "Traceback" not in completed.stderr
    assert 1 <= len(stderr.splitlines()) <= 2, stderr
    for name in names:
        assert name in stderr, stderr
    for secret in SECRETS:
        assert secret not in completed.stdout + completed.stderr


@pytest.mark.parametrize(
    ("args", "database_url", "code", "names"),
    [
        (["migrate"], f"postgresql://nouser:{PASSWORD}@127.0.0.1:{closed_port()}/nodb", 3, ["DATABASE_URL"]),
        (["status"], f"postgresql://nouser:{PASSWORD}@127.0.0.1:{closed_port()}/nodb", 3, ["DATABASE_URL"]),
        (
            ["requeue-dead-events"],
            f"postgresql://nouser:{PASSWORD}@127.0.0.1:{closed_port()}/nodb",
            3,
            ["DATABASE_URL"],
        ),
        (["migrate"], f"mysql://root:{PASSWORD}@127.0.0.1/app", 2, ["DATABASE_URL", "PostgreSQL"]),
        (["migrate"], "notaurl", 2, ["DATABASE_URL"]),
        (["status"], f"postgresql://nosuchrole:{PASSWORD}@HOST/postgres", 3, ["DATABASE_URL", "login"]),
        (
            ["migrate"],
            "postgresql://postgres@HOST/no_such_database_h5",
            3,
            ["DATABASE_URL", "does not exist"],
        ),
    ],
)
def test_database_failures_name_the_variable(
    cli_env: dict[str, str], server_url: str, args: list[str], database_url: str, code: int, names: list[str]
) -> None:
    """Unreachable, non-PostgreSQL, unparseable, refused login, missing database: one or two lines."""
    host = sa.make_url(server_url).host or "127.0.0.1"
    port = sa.make_url(server_url).port or 5432
    env = {**cli_env, "DATABASE_URL": database_url.replace("HOST", f"{host}:{port}")}

    completed = run_cli(args, env)

    assert_operator_message(completed, code, *names)


@pytest.mark.parametrize(
    ("env_update", "names"),
    [
        ({}, ["CLERK_WEBHOOK_SECRET"]),
        ({"CLERK_WEBHOOK_SECRET": ""}, ["CLERK_WEBHOOK_SECRET"]),
        ({"CLERK_WEBHOOK_SECRET": "not-a-whsec-secret-value"}, ["CLERK_WEBHOOK_SECRET"]),
        (
            {"CLERK_WEBHOOK_SECRET": WEBHOOK_SECRET, "ORGSYNC_WEBHOOK_APPLY": "sometimes"},
            ["ORGSYNC_WEBHOOK_APPLY"],
        ),
        ({"CLERK_WEBHOOK_SECRET": WEBHOOK_SECRET, "ORGSYNC_LOG_FORMAT": "xml"}, ["ORGSYNC_LOG_FORMAT"]),
    ],
)
def test_receiver_settings_failures_name_the_variable(
    cli_env: dict[str, str], database_url: str, env_update: dict[str, str], names: list[str]
) -> None:
    """serve-webhooks refuses to start without a usable signing secret or with a bad setting."""
    env = {**cli_env, "DATABASE_URL": database_url, **env_update}

    completed = run_cli(["serve-webhooks", "--port", str(closed_port())], env)

    assert_operator_message(completed, exit_codes.SETTINGS, *names)


def test_port_in_use_is_named(cli_env: dict[str, str], database_url: str) -> None:
    """A taken port is a one-line message naming --port, not uvicorn's traceback."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {**cli_env, "DATABASE_URL": database_url, "CLERK_WEBHOOK_SECRET": WEBHOOK_SECRET}
        completed = run_cli(["serve-webhooks", "--port", str(port)], env)

    assert_operator_message(completed, exit_codes.SETTINGS, "--port", str(port))


def test_bad_number_setting_is_named(cli_env: dict[str, str], database_url: str) -> None:
    env = {**cli_env, "DATABASE_URL": database_url, "ORGSYNC_MAX_DELETE_FRACTION": "lots"}

    completed = run_cli(["status"], env)

    assert_operator_message(completed, exit_codes.SETTINGS, "ORGSYNC_MAX_DELETE_FRACTION")


# --- Dagster steps -----------------------------------------------------------------------------------


def run_full_sync(resources: dict[str, Any] | None = None) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("clerk_full_sync").execute_in_process(
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False, resources=resources
    )


def step_failure(result: dg.ExecuteInProcessResult, step: str) -> tuple[str, dict[str, Any]]:
    """The dg.Failure description and metadata of ``step``."""
    assert not result.success
    (event,) = [e for e in result.get_step_failure_events() if e.step_key == step]
    data = event.step_failure_data.user_failure_data
    assert data is not None, f"{step} failed without dg.Failure: {event.step_failure_data.error}"
    return data.description, {key: value.value for key, value in data.metadata.items()}


def assert_no_secret(*texts: Any) -> None:
    for text in texts:
        for secret in (*SECRETS, os.environ.get("CLERK_SECRET_KEY") or "unset-key"):
            assert secret not in str(text)


def recorded_failure(engine: Engine, table: str) -> str:
    with engine.connect() as conn:
        outcome, error = conn.execute(
            sa.select(sync_runs.c.outcome, sync_runs.c.error)
            .where(sync_runs.c.table_name == table)
            .order_by(sync_runs.c.id.desc())
            .limit(1)  # the last attempt: a transient failure is retried, each attempt recorded
        ).one()
    assert outcome == "failure"
    return error


def test_refused_key_fails_the_step_with_the_operator_message(
    engine: Engine, emulator: ClerkEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLERK_SECRET_KEY", CLERK_KEY)

    description, metadata = step_failure(run_full_sync(), "organizations")

    assert "Clerk refused CLERK_SECRET_KEY" in description and "401" in description
    assert metadata["kind"] == "clerk" and metadata["exit_code"] == exit_codes.CLERK
    assert "ClerkAuthError" in metadata["cause"]
    assert_no_secret(description, metadata)
    assert recorded_failure(engine, "organizations") == description


def test_empty_key_names_the_variable(
    engine: Engine, emulator: ClerkEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CLERK_SECRET_KEY", " ")

    description, metadata = step_failure(run_full_sync(), "profiles")

    assert description.startswith("CLERK_SECRET_KEY is not set or empty")
    assert metadata["kind"] == "settings"
    assert recorded_failure(engine, "profiles") == description


def test_unreachable_clerk_names_the_url_variable(engine: Engine) -> None:
    unreachable = fast_clerk_retries(api_url=f"http://127.0.0.1:{closed_port()}/v1")

    description, metadata = step_failure(run_full_sync(unreachable), "organizations")

    assert "Clerk did not answer" in description and "CLERK_API_URL" in description
    assert len(description.splitlines()) <= 2
    assert "ClerkUnavailableError" in metadata["cause"]
    assert recorded_failure(engine, "organizations") == description


def test_unreachable_database_fails_without_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://orgsync:{PASSWORD}@127.0.0.1:{closed_port()}/app")

    description, metadata = step_failure(run_full_sync(), "organizations")

    assert description.startswith("Cannot reach PostgreSQL") and "DATABASE_URL" in description
    assert metadata["exit_code"] == exit_codes.DATABASE
    assert_no_secret(description, metadata)


def test_deletion_guard_fails_the_step_and_is_recorded(engine: Engine, emulator: ClerkEmulator) -> None:
    emulator.seed_sample(organizations=10, users=6, memberships_per_org=1)
    assert run_full_sync().success
    for org_id in list(emulator.organizations)[:5]:
        emulator.delete_organization(org_id)

    result = run_full_sync()
    description, metadata = step_failure(result, "organizations")

    assert "ORGSYNC_MAX_DELETE_FRACTION" in description and "refusing to delete 5 of 10" in description
    assert metadata["kind"] == "deletion_guard" and metadata["exit_code"] == exit_codes.DELETION_GUARD
    with engine.connect() as conn:
        outcomes = (
            conn.execute(
                sa.select(sync_runs.c.outcome)
                .where(sync_runs.c.table_name == "organizations")
                .order_by(sync_runs.c.id)
            )
            .scalars()
            .all()
        )
    assert outcomes == ["success", "failure"]


def test_redact_masks_every_secret_shape(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLERK_WEBHOOK_SECRET", WEBHOOK_SECRET)
    text = (
        f"postgresql://u:{PASSWORD}@db/app host=db password={PASSWORD} key {CLERK_KEY} "
        f"secret {WEBHOOK_SECRET} sk_test_abcdef123"
    )

    masked = redact(text)

    assert_no_secret(masked)
    assert "sk_test_abcdef123" not in masked
    assert "postgresql://u:***@db/app" in masked
