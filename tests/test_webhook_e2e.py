"""End to end: a signed event posted to the receiver lands in Postgres through `dagster-daemon`
running `clerk_webhook_sensor` and launching `clerk_webhook_apply`."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from orgsync_pipeline.clerk.emulator import ClerkEmulator
from orgsync_pipeline.demo import DAGSTER_YAML
from orgsync_pipeline.store.schema import organizations
from tests.support import Receiver

ROOT = Path(__file__).resolve().parent.parent
DAEMON = Path(sys.executable).with_name("dagster-daemon")


def test_a_posted_event_lands_through_the_daemon(receiver: Receiver, engine: Engine, tmp_path: Path) -> None:
    """The daemon's sensor sees the event the receiver committed and launches a run that applies it."""
    dagster_home = tmp_path / "dagster"
    dagster_home.mkdir()
    (dagster_home / "dagster.yaml").write_text(DAGSTER_YAML)
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "ORGSYNC_WEBHOOK_SENSOR_INTERVAL": "1"}
    log_path = tmp_path / "daemon.log"
    with log_path.open("w") as log:
        daemon = subprocess.Popen(
            [str(DAEMON), "run", "-w", "workspace.yaml"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        clerk = ClerkEmulator()
        org = clerk.create_organization("Delivered By Webhook")
        assert receiver.post(clerk.event_envelope("organization.created", org)).status_code == 200

        deadline = time.monotonic() + 120
        name = None
        while name is None and time.monotonic() < deadline and daemon.poll() is None:
            with engine.connect() as conn:
                name = conn.execute(
                    sa.select(organizations.c.name).where(organizations.c.id == org["id"])
                ).scalar_one_or_none()
            time.sleep(0.5)
        assert name == "Delivered By Webhook", log_path.read_text()[-5000:]
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()
