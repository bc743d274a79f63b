"""What the tests share besides fixtures: the session's emulator address, a Svix-like sender for the
receiver, and resources for runs that change a setting. Fixtures live in ``conftest.py``; test modules
import helpers from here, never from ``conftest``."""

import json
import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import dagster as dg
import httpx

from orgsync_pipeline.clerk.emulator import svix_headers
from orgsync_pipeline.resources import ClerkResource


def free_port() -> int:
    """A loopback TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# Every test's emulator listens here: the code location reads CLERK_API_URL when it is imported.
EMULATOR_PORT = free_port()
EMULATOR_URL = f"http://127.0.0.1:{EMULATOR_PORT}/v1"


@dataclass
class Receiver:
    """The webhook receiver served over loopback HTTP, and a Svix-like sender for it."""

    url: str
    secret: str

    def post(
        self, envelope: Any, *, msg_id: str | None = None, timestamp: datetime | None = None
    ) -> httpx.Response:
        """POST ``envelope`` signed as Svix would (a fresh svix-id unless given)."""
        body = json.dumps(envelope).encode() if not isinstance(envelope, bytes) else envelope
        seconds = int(timestamp.timestamp()) if timestamp else None
        headers = svix_headers(self.secret, body, msg_id=msg_id, timestamp=seconds)
        headers["content-type"] = "application/json"
        return httpx.post(f"{self.url}/webhooks/clerk", content=body, headers=headers, timeout=30)


def clerk_resource(**fields: Any) -> ClerkResource:
    """The code location's Clerk resource in tests (the emulator; the key from CLERK_SECRET_KEY,
    read when the run starts), with ``fields`` set."""
    return ClerkResource(secret_key=dg.EnvVar("CLERK_SECRET_KEY"), **{"api_url": EMULATOR_URL, **fields})


def fast_clerk_retries(**fields: Any) -> dict[str, ClerkResource]:
    """``resources=`` for a run whose Clerk requests give up after 2 attempts or 1 s."""
    return {"clerk": clerk_resource(max_attempts=2, retry_seconds=1, **fields)}
