"""Resources for test runs that change a setting, as a deployment sets it: on the resource."""

from typing import Any

import dagster as dg

from orgsync_pipeline.resources import ClerkResource
from tests.conftest import EMULATOR_URL


def clerk_resource(**fields: Any) -> ClerkResource:
    """The code location's Clerk resource in tests (the emulator; the key from CLERK_SECRET_KEY,
    read when the run starts), with ``fields`` set."""
    return ClerkResource(secret_key=dg.EnvVar("CLERK_SECRET_KEY"), **{"api_url": EMULATOR_URL, **fields})


def fast_clerk_retries(**fields: Any) -> dict[str, ClerkResource]:
    """``resources=`` for a run whose Clerk requests give up after 2 attempts or 1 s."""
    return {"clerk": clerk_resource(max_attempts=2, retry_seconds=1, **fields)}
