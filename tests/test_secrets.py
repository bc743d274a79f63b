"""Secrets stay secret (issue 8.6): the Clerk key, the webhook secret and the database password never
show in logs, Dagster's event records and run metadata, HTTP answers or the CLI's error output, even
when things fail."""

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest

from orgsync_pipeline.clerk.emulator import DEFAULT_SECRET_KEY, ClerkEmulator
from orgsync_pipeline.definitions import defs
from tests.support import Receiver, fast_clerk_retries

REPO = Path(__file__).resolve().parents[1]
DB_PASSWORD = "pw-canary-7f3a9c"
UNREACHABLE_DB = f"postgresql://orgsync:{DB_PASSWORD}@127.0.0.1:1/orgsync"
WRONG_KEY = "sk_test_canaryKEY9b1e4d7c2a"


def run_full_sync(resources: dict[str, Any] | None = None) -> tuple[dg.ExecuteInProcessResult, str]:
    """Run clerk_full_sync; return the result and every event record of the run as text."""
    instance = dg.DagsterInstance.ephemeral()
    result = defs.resolve_job_def("clerk_full_sync").execute_in_process(
        instance=instance, raise_on_error=False, resources=resources
    )
    records = instance.get_records_for_run(result.run_id).records
    run = instance.get_run_by_id(result.run_id)
    return result, "\n".join([repr(record.event_log_entry) for record in records] + [repr(run)])


def assert_no_secret(text: str, *secrets: str) -> None:
    for secret in secrets:
        assert secret not in text, (
            f"a secret leaked: …{text[max(0, text.find(secret) - 80) : text.find(secret)]}"
        )


@pytest.mark.parametrize("failure", ["clerk-refuses-key", "clerk-500", "database-unreachable"])
def test_a_failing_sync_shows_no_secret(
    failure: str,
    emulator: ClerkEmulator,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    emulator.seed_sample(organizations=2, users=3, memberships_per_org=1)
    key = DEFAULT_SECRET_KEY
    if failure == "clerk-refuses-key":
        key = WRONG_KEY
        monkeypatch.setenv("CLERK_SECRET_KEY", WRONG_KEY)
    elif failure == "clerk-500":
        for path in ("/organizations", "/users", "/organization_memberships"):
            emulator.inject_fault(path, 500, times=-1)
    else:
        monkeypatch.setenv("DATABASE_URL", UNREACHABLE_DB)

    result, records = run_full_sync(resources=fast_clerk_retries())

    assert not result.success
    out, err = capfd.readouterr()
    for text in (records, caplog.text, out, err):
        assert_no_secret(text, key, DB_PASSWORD)


def test_the_receiver_under_hostile_requests_shows_no_secret(
    receiver: Receiver, caplog: pytest.LogCaptureFixture, capfd: pytest.CaptureFixture[str]
) -> None:
    url = f"{receiver.url}/webhooks/clerk"
    answers = [
        httpx.post(
            url, content=b"{}", headers={"svix-id": "x", "svix-timestamp": "1", "svix-signature": "v1,x"}
        ),
        httpx.post(
            url, content=b"\xff", headers={"svix-id": "msg_1", "svix-timestamp": "x", "svix-signature": "y"}
        ),
        httpx.post(url, content=b"{}"),
        receiver.post({"type": "user.created", "data": {"first_name": "\x00"}}),
        receiver.post(b"[" * 3000 + b"]" * 3000),
        receiver.post({"type": "user.created", "data": {}}, msg_id="m" * 3000),
        receiver.post({"type": "user.created", "data": {"id": "user_1"}}),
    ]
    out, err = capfd.readouterr()
    setup = "\n".join(record.getMessage() for record in caplog.get_records("setup"))
    texts = [setup, caplog.text, out, err, *(f"{r.status_code} {r.headers} {r.text}" for r in answers)]
    key = receiver.secret.removeprefix("whsec_")
    for text in texts:
        assert_no_secret(text, receiver.secret, key)


CLI_COMMANDS = [
    ["migrate"],
    ["status"],
    ["requeue-dead-events"],
    ["serve-webhooks", "--port", "1"],
]


@pytest.mark.parametrize("command", CLI_COMMANDS, ids=lambda command: command[0])
def test_cli_errors_show_no_secret(command: list[str], tmp_path: Path) -> None:
    """Every CLI command, with an unreachable database (a password in its URL) and a bad webhook
    secret: whatever it prints, no secret."""
    webhook_secret = "whsec_not-base64-canary-" + uuid.uuid4().hex
    env = {
        **os.environ,
        "DATABASE_URL": UNREACHABLE_DB,
        "CLERK_SECRET_KEY": WRONG_KEY,
        "CLERK_WEBHOOK_SECRET": webhook_secret,
        "ORGSYNC_HOME": str(tmp_path / "home"),
    }
    completed = subprocess.run(
        [sys.executable, "-m", "orgsync_pipeline.cli", *command],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode != 0, completed.stdout + completed.stderr
    assert_no_secret(completed.stdout + completed.stderr, DB_PASSWORD, WRONG_KEY, webhook_secret)
