"""Least privilege and row-level security: sql/roles/create_roles.sql and sql/0005, on a real PostgreSQL.

Only the fixture that creates the roles runs as the administrator; the pipeline, the receiver and
the application connect under their own roles (trust authentication on 127.0.0.1)."""

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url

from orgsync_pipeline.clerk.client import ClerkClient
from orgsync_pipeline.clerk.emulator import DEFAULT_SECRET_KEY, ClerkEmulator
from orgsync_pipeline.settings import load_settings
from orgsync_pipeline.store import inbox
from orgsync_pipeline.store.database import sql_dir
from orgsync_pipeline.store.schema import organization_members, organizations, profiles, webhook_inbox
from orgsync_pipeline.sync import sync_memberships, sync_organizations, sync_profiles
from tests.support import EMULATOR_URL


@dataclass
class Roles:
    pipeline: str
    receiver: str
    app: str

    def url(self, database_url: str, role: str) -> str:
        return make_url(database_url).set(username=role, password=None).render_as_string(hide_password=False)


@pytest.fixture
def roles(engine: Engine, database_url: str) -> Iterator[Roles]:
    """Roles with names unique to this test, created by the administrator (the only superuser step)."""
    suffix = uuid.uuid4().hex[:8]
    created = Roles(f"orgsync_pipeline_{suffix}", f"orgsync_receiver_{suffix}", f"orgsync_app_{suffix}")
    script = (sql_dir() / "roles" / "create_roles.sql").read_text()
    with engine.begin() as conn:
        for setting, value in (
            ("orgsync.pipeline_role", created.pipeline),
            ("orgsync.receiver_role", created.receiver),
            ("orgsync.app_role", created.app),
        ):
            conn.execute(sa.select(sa.func.set_config(setting, value, True)))
        conn.connection.driver_connection.execute(script)
    yield created
    with engine.begin() as conn:
        for role in (created.pipeline, created.receiver, created.app):
            conn.exec_driver_sql(f'DROP OWNED BY "{role}"')
            conn.exec_driver_sql(f'DROP ROLE "{role}"')


def seed(emulator: ClerkEmulator) -> dict[str, str]:
    ann = emulator.create_user("Ann", "Archer", "ann@acme.com")["id"]
    bob = emulator.create_user("Bob", "Baker", "bob@acme.com")["id"]
    eve = emulator.create_user("Eve", "Evans", "eve@other.com")["id"]
    acme = emulator.create_organization("Acme")["id"]
    other = emulator.create_organization("Other")["id"]
    emulator.create_membership(acme, ann, "org:admin")
    emulator.create_membership(acme, bob)
    emulator.create_membership(other, eve)
    return {"ann": ann, "bob": bob, "eve": eve, "acme": acme, "other": other}


def full_sync_as(url: str) -> None:
    engine = sa.create_engine(url)
    settings, log = load_settings(), __import__("logging").getLogger("test_roles")
    try:
        with ClerkClient(DEFAULT_SECRET_KEY, EMULATOR_URL) as client:
            for sync in (sync_organizations, sync_profiles, sync_memberships):
                sync(engine, client, settings, log)
    finally:
        engine.dispose()


def test_pipeline_and_receiver_work_under_their_roles_and_the_app_sees_only_its_organizations(
    roles: Roles, database_url: str, emulator: ClerkEmulator, engine: Engine
) -> None:
    """A full sync as the pipeline role lands everything; the receiver stores an event as its role;
    the app role, acting as Ann, sees Acme, its two members and their profiles, nothing of Other."""
    ids = seed(emulator)
    full_sync_as(roles.url(database_url, roles.pipeline))
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(organization_members)).scalar_one() == 3

    receiver = sa.create_engine(roles.url(database_url, roles.receiver))
    with receiver.begin() as conn:
        stored = inbox.store_event(
            conn,
            svix_id="msg_roles1",
            payload={"type": "user.updated", "data": {"id": ids["ann"]}},
            handled=True,
        )
    receiver.dispose()
    with engine.connect() as conn:
        assert (
            conn.execute(
                sa.select(webhook_inbox.c.svix_id).where(webhook_inbox.c.id == stored.inbox_id)
            ).scalar_one()
            == "msg_roles1"
        )

    app = sa.create_engine(roles.url(database_url, roles.app))
    try:
        with app.begin() as conn:
            conn.execute(sa.select(sa.func.set_config("orgsync.user_id", ids["ann"], True)))
            assert set(conn.execute(sa.select(organizations.c.id)).scalars()) == {ids["acme"]}
            assert set(conn.execute(sa.select(organization_members.c.user_id)).scalars()) == {
                ids["ann"],
                ids["bob"],
            }
            assert set(conn.execute(sa.select(profiles.c.id)).scalars()) == {ids["ann"], ids["bob"]}
        with app.begin() as conn:
            assert conn.execute(sa.select(organizations.c.id)).all() == []  # no acting user: nothing
        with app.begin() as conn:
            conn.execute(sa.select(sa.func.set_config("orgsync.user_id", ids["eve"], True)))
            assert set(conn.execute(sa.select(organizations.c.id)).scalars()) == {ids["other"]}
    finally:
        app.dispose()


@pytest.mark.parametrize(
    "statement",
    [
        sa.update(organizations).values(name="Hijacked"),
        sa.insert(organizations).values(id="org_fake", name="Fake", public_metadata={}),
        sa.delete(organization_members),
        sa.insert(webhook_inbox).values(svix_id="msg_x", event_type="user.created", payload={}),
    ],
    ids=["update", "insert", "delete", "inbox"],
)
def test_the_app_role_cannot_write(
    roles: Roles, database_url: str, emulator: ClerkEmulator, engine: Engine, statement: sa.Executable
) -> None:
    """Every write by the application role is refused, and nothing changes."""
    ids = seed(emulator)
    full_sync_as(roles.url(database_url, roles.pipeline))
    app = sa.create_engine(roles.url(database_url, roles.app))
    try:
        with pytest.raises(sa.exc.ProgrammingError, match="permission denied"), app.begin() as conn:
            conn.execute(sa.select(sa.func.set_config("orgsync.user_id", ids["ann"], True)))
            conn.execute(statement)
    finally:
        app.dispose()
    with engine.connect() as conn:
        assert dict(conn.execute(sa.select(organizations.c.id, organizations.c.name)).all()) == {
            ids["acme"]: "Acme",
            ids["other"]: "Other",
        }
        assert conn.execute(sa.select(sa.func.count()).select_from(organization_members)).scalar_one() == 3
