"""`orgsync serve-webhooks --workers N`: N processes on one port, each storing and applying events."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import psutil
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from orgsync_pipeline.clerk.emulator import ClerkEmulator, svix_headers
from orgsync_pipeline.store.schema import organizations

ORGSYNC = [sys.executable, "-m", "orgsync_pipeline.cli"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: object, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.1)
    return False


def healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=5).status_code == 200
    except httpx.TransportError:
        return False


def test_two_workers_store_and_apply_every_event(
    database_url: str, webhook_secret: str, engine: Engine
) -> None:
    """Two worker processes answer on one port; every signed event is committed and applied once."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "DATABASE_URL": database_url, "CLERK_WEBHOOK_SECRET": webhook_secret}
    process = subprocess.Popen(
        [*ORGSYNC, "serve-webhooks", "--port", str(port), "--workers", "2"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    emulator = ClerkEmulator()
    try:
        assert wait_until(lambda: healthy(url), 120), "the receiver did not come up"
        assert wait_until(lambda: len(psutil.Process(process.pid).children()) >= 2, 30)
        org_ids = []
        with httpx.Client(timeout=30) as client:
            for i in range(40):
                org = emulator.create_organization(f"Worker Org {i}")
                org_ids.append(org["id"])
                body = json.dumps(emulator.event_envelope("organization.created", org)).encode()
                headers = {**svix_headers(webhook_secret, body), "content-type": "application/json"}
                answer = client.post(f"{url}/webhooks/clerk", content=body, headers=headers)
                assert answer.status_code == 200, answer.text

        def applied() -> bool:
            with engine.connect() as conn:
                return set(conn.execute(sa.select(organizations.c.id)).scalars()) == set(org_ids)

        assert wait_until(applied, 60)
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr
