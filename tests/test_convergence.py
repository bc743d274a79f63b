"""Convergence, property-tested: random histories of Clerk changes, delivered as webhooks with
duplicates, reordering, drops and redeliveries, interleaved with on-demand syncs, then one full sync.

- (a) After the full sync, the database equals Clerk (the emulator): live organizations with their
  names and slugs, live profiles with their emails and names, memberships with their roles.
- (b) Before that full sync, when no event was dropped, every delivered change is reflected unless
  a newer one supersedes it: the database already equals Clerk's final state.

Each example runs a fresh emulator on the session's port and empties the test's schema first.
Events are Clerk's own (the emulator's ``webhook_events``, emitted towards an endpoint that refuses
every connection) and reach the tables through the real write path: the inbox and
``apply_pending_events`` (all at once, or one at a time as the inline receiver does) or
``apply_event`` straight in arrival order.
"""

import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import dagster as dg
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from orgsync_pipeline import ondemand
from orgsync_pipeline.clerk.client import ClerkClient
from orgsync_pipeline.clerk.emulator import DEFAULT_SECRET_KEY, ClerkEmulator
from orgsync_pipeline.definitions import defs
from orgsync_pipeline.events import HANDLED_EVENTS, apply_event, apply_pending_events
from orgsync_pipeline.settings import Settings, load_settings
from orgsync_pipeline.store.inbox import event_time, store_event
from orgsync_pipeline.store.schema import organization_members, organizations, profiles, webhook_inbox
from tests.support import EMULATOR_PORT, EMULATOR_URL

log = logging.getLogger("test_convergence")

ORG_SLOTS = 3
USER_SLOTS = 3
ORG_NAMES = ("Acme", "Globex", "Initech")
FIRST_NAMES = ("Ada", "Bob", "Cyd")
ROLES = ("org:admin", "org:member", "org:viewer")
APP_ROLES = {"org:admin": "admin", "org:member": "member", "org:viewer": "viewer"}
# How one Clerk event travels: delivered once; twice with the same svix-id (a Svix retry); once now
# and again later under a new svix-id (a replay from the dashboard); held back until the very end;
# never.
FATES = ("once", "duplicate", "replay", "late", "drop")
# How a flush of deliveries is applied: stored, then one drain of the inbox (Clerk's order within
# the flush); each stored and drained at once (the inline receiver); apply_event in arrival order.
MODES = ("inbox", "inline", "direct")

CONVERGENCE = settings(
    # ORGSYNC_CONVERGENCE_EXAMPLES=500 for a longer hunt; 25 keeps the file near 30 s.
    max_examples=int(os.environ.get("ORGSYNC_CONVERGENCE_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

org_slot = st.integers(0, ORG_SLOTS - 1)
user_slot = st.integers(0, USER_SLOTS - 1)
role = st.sampled_from(ROLES)
operation = st.one_of(
    st.tuples(st.just("deliver"), st.sampled_from(MODES)),
    st.tuples(st.just("rename_org"), org_slot, st.sampled_from(ORG_NAMES)),
    st.tuples(st.just("update_user"), user_slot, st.sampled_from(FIRST_NAMES), st.booleans()),
    st.tuples(st.just("add_member"), org_slot, user_slot, role),
    st.tuples(st.just("set_role"), org_slot, user_slot, role),
    st.tuples(st.just("remove_member"), org_slot, user_slot),
    st.tuples(st.just("delete_org"), org_slot),
    st.tuples(st.just("delete_user"), user_slot),
    st.tuples(st.just("create_org"), org_slot),
    st.tuples(st.just("create_user"), user_slot),
    st.tuples(st.just("sync_org"), org_slot),
    st.tuples(st.just("sync_user"), user_slot),
)
histories = st.lists(operation, min_size=14, max_size=30)

Operation = tuple[Any, ...]
State = dict[str, Any]


# -- the world: Clerk, its events, and their delivery ------------------------------------------------


@dataclass
class Delivery:
    svix_id: str
    envelope: dict[str, Any]
    fate: str


@dataclass
class World:
    """One example: the emulator, the ids in each slot, and the events not delivered yet."""

    emulator: ClerkEmulator
    clerk: ClerkClient
    engine: Engine
    settings: Settings
    draw: Any  # hypothesis' data.draw
    lossy: bool
    orgs: list[str | None] = field(default_factory=lambda: [None] * ORG_SLOTS)
    users: list[str | None] = field(default_factory=lambda: [None] * USER_SLOTS)
    emitted: int = 0
    pending: list[Delivery] = field(default_factory=list)
    dropped: int = 0
    trace: list[str] = field(default_factory=list)

    def collect_events(self) -> None:
        """Give each new Clerk event its fate."""
        events = self.emulator.webhook_events
        fates = FATES if self.lossy else tuple(f for f in FATES if f != "drop")
        for envelope in events[self.emitted :]:
            fate = self.draw(st.sampled_from(fates), label=f"fate of {envelope['type']}")
            if fate == "drop":
                self.dropped += 1
            else:
                self.pending.append(Delivery(_svix_id(), envelope, fate))
        self.emitted = len(events)


def _svix_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def _refusing_url() -> str:
    """A loopback URL nothing listens on: the emulator's deliveries fail at once, its events stay."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/webhooks/clerk"


@contextmanager
def fresh_clerk() -> Iterator[tuple[ClerkEmulator, ClerkClient]]:
    """A new, empty emulator on the session's port (what CLERK_API_URL points at), emitting events."""
    emulator = ClerkEmulator()
    emulator.start(port=EMULATOR_PORT)
    emulator.add_webhook_endpoint(_refusing_url(), "whsec_" + "A" * 32, retry_delays=())
    try:
        with ClerkClient(DEFAULT_SECRET_KEY, EMULATOR_URL) as client:
            yield emulator, client
    finally:
        emulator.stop()


def reset_database(engine: Engine) -> None:
    """Empty every table of the test's schema but the migrations' record."""
    with engine.begin() as conn:
        tables = conn.execute(
            sa.text(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
                "AND tablename <> 'orgsync_migrations'"
            )
        ).scalars()
        conn.execute(sa.text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))


def wait_for_clock(emulator: ClerkEmulator) -> None:
    """Wait until real time (and so the database's now()) is past every Clerk timestamp so far.

    The emulator's clock runs ahead of real time by 1 ms per mutation within a millisecond; a real
    Clerk's is not tens of ms ahead of the database's. Syncs stamp deletions with the database's
    now(), and a deletion stamped before the row's own updated_at would (rightly) keep the row."""
    latest = max((envelope["timestamp"] for envelope in emulator.webhook_events), default=0)
    while time.time() * 1000 <= latest + 1:
        time.sleep(0.001)


# -- Clerk changes --------------------------------------------------------------------------------


def change_clerk(world: World, op: Operation) -> None:
    """Apply one change to the emulator; an operation that does not apply now does nothing."""
    clerk, kind = world.emulator, op[0]
    if kind in ("create_org", "rename_org", "delete_org"):
        slot = op[1]
        org_id = world.orgs[slot]
        alive = org_id is not None and clerk.get_organization(org_id) is not None
        if kind == "create_org" and not alive:
            world.orgs[slot] = clerk.create_organization(ORG_NAMES[slot])["id"]
        elif kind == "rename_org" and alive:
            clerk.update_organization(org_id, name=op[2])
        elif kind == "delete_org" and alive:
            clerk.delete_organization(org_id)
    elif kind in ("create_user", "update_user", "delete_user"):
        slot = op[1]
        user_id = world.users[slot]
        alive = user_id is not None and clerk.get_user(user_id) is not None
        if kind == "create_user" and not alive:
            name = FIRST_NAMES[slot]
            world.users[slot] = clerk.create_user(name, "Tester", f"{name.lower()}{slot}@example.com")["id"]
        elif kind == "update_user" and alive:
            email = f"{op[2].lower()}{slot}.{clerk.now_ms()}@example.com" if op[3] else None
            clerk.update_user(user_id, first_name=op[2], **({"email": email} if email else {}))
        elif kind == "delete_user" and alive:
            clerk.delete_user(user_id)
    else:
        change_membership(world, op)


def change_membership(world: World, op: Operation) -> None:
    clerk, kind = world.emulator, op[0]
    org_id, user_id = world.orgs[op[1]], world.users[op[2]]
    if org_id is None or user_id is None:
        return
    if clerk.get_organization(org_id) is None or clerk.get_user(user_id) is None:
        return
    member = clerk.get_membership(org_id, user_id) is not None
    if kind == "add_member" and not member:
        clerk.create_membership(org_id, user_id, op[3])
    elif kind == "set_role" and member:
        clerk.update_membership(org_id, user_id, role=op[3])
    elif kind == "remove_member" and member:
        clerk.delete_membership(org_id, user_id)


def sync_on_demand(world: World, op: Operation) -> None:
    """``POST /sync/…``'s work for the slot's current or last id (a deleted one answers 404)."""
    kind, slot = op
    target = world.orgs[slot] if kind == "sync_org" else world.users[slot]
    if target is None:
        return
    wait_for_clock(world.emulator)
    if kind == "sync_org":
        ondemand.sync_organization(world.engine, world.clerk, target, world.settings)
    else:
        ondemand.sync_user(world.engine, world.clerk, target, world.settings)
    time.sleep(0.002)  # later Clerk changes are stamped after the sync's writes and deletions


# -- delivery -------------------------------------------------------------------------------------


def deliver(world: World, mode: str, *, final: bool) -> None:
    """Deliver the pending events (the held-back ones too when ``final``) in a drawn order."""
    now: list[Delivery] = []
    later: list[Delivery] = []
    for item in world.pending:
        if item.fate == "late" and not final:
            later.append(item)
            continue
        now.append(item)
        if item.fate == "duplicate":
            now.append(item)
        elif item.fate == "replay":
            later.append(Delivery(_svix_id(), item.envelope, "late"))
    if final:
        now.extend(later)
        later = []
    world.pending = later
    if not now:
        return
    order = world.draw(st.permutations(range(len(now))), label="arrival order")
    arrivals = [now[i] for i in order]
    world.trace.append(f"deliver[{mode}]: " + ", ".join(_describe(d) for d in arrivals))
    if mode == "direct":
        for item in arrivals:
            with world.engine.begin() as conn:
                apply_event(
                    conn,
                    item.envelope["type"],
                    item.envelope,
                    occurred_at=event_time(item.envelope),
                    role_map=world.settings.role_map,
                )
        return
    for item in arrivals:
        with world.engine.begin() as conn:
            handled = item.envelope["type"] in HANDLED_EVENTS
            store_event(conn, svix_id=item.svix_id, payload=item.envelope, handled=handled)
        if mode == "inline":
            drain(world.engine, world.settings)
    if mode == "inbox":
        drain(world.engine, world.settings)


def drain(engine: Engine, settings: Settings) -> None:
    """One drain of the inbox. A drain that finds the inbox's lock taken (by another one, or, while
    that lock was database-wide, by a test in another schema) skips at once: wait for our turn."""
    deadline = time.monotonic() + 60
    while apply_pending_events(engine, settings, log).skipped_reason:
        assert time.monotonic() < deadline, "the inbox drain lock stayed taken for 60 s"
        time.sleep(0.01)


def _describe(item: Delivery) -> str:
    data = item.envelope["data"]
    subject = data.get("id")
    if item.envelope["type"].startswith("organizationMembership"):
        subject = f"{data['organization']['id'][-4:]}/{data['public_user_data']['user_id'][-4:]}"
    else:
        subject = str(subject)[-4:]
    return f"{item.envelope['type']}({subject}@{item.envelope['timestamp']})"


def run_history(world: World, history: list[Operation]) -> None:
    """Seed every slot, then play the history; ends with a final delivery of everything pending."""
    seed: list[Operation] = [("create_org", i) for i in range(ORG_SLOTS)]
    seed += [("create_user", i) for i in range(USER_SLOTS)]
    seed += [("add_member", i, i, "org:member") for i in range(min(ORG_SLOTS, USER_SLOTS))]
    for op in [*seed, *history]:
        if op[0] == "deliver":
            world.collect_events()
            deliver(world, op[1], final=False)
        elif op[0] in ("sync_org", "sync_user"):
            world.collect_events()
            world.trace.append(f"{op[0]}({op[1]})")
            sync_on_demand(world, op)
        else:
            change_clerk(world, op)
            world.trace.append(repr(op))
    world.collect_events()
    deliver(world, world.draw(st.sampled_from(MODES), label="final delivery mode"), final=True)


# -- the two sides --------------------------------------------------------------------------------


def clerk_state(emulator: ClerkEmulator) -> State:
    users = emulator.users

    def email(user: dict[str, Any]) -> str | None:
        primary = user["primary_email_address_id"]
        return next((a["email_address"] for a in user["email_addresses"] if a["id"] == primary), None)

    return {
        "organizations": {i: (o["name"], o["slug"]) for i, o in emulator.organizations.items()},
        "profiles": {i: (email(u), u["first_name"], u["last_name"]) for i, u in users.items()},
        "organization_members": {
            (m["organization"]["id"], m["public_user_data"]["user_id"]): (
                m["id"],
                APP_ROLES[m["role"]],
                m["role"],
            )
            for m in emulator.memberships.values()
        },
    }


def database_state(engine: Engine) -> State:
    members = organization_members
    with engine.connect() as conn:
        orgs = conn.execute(
            sa.select(organizations.c.id, organizations.c.name, organizations.c.slug).where(
                organizations.c.deleted_at.is_(None)
            )
        ).all()
        users = conn.execute(
            sa.select(profiles.c.id, profiles.c.email, profiles.c.first_name, profiles.c.last_name).where(
                profiles.c.deleted_at.is_(None)
            )
        ).all()
        rows = conn.execute(
            sa.select(
                members.c.organization_id,
                members.c.user_id,
                members.c.clerk_membership_id,
                members.c.role,
                members.c.clerk_role,
            )
        ).all()
    return {
        "organizations": {row[0]: tuple(row[1:]) for row in orgs},
        "profiles": {row[0]: tuple(row[1:]) for row in users},
        "organization_members": {(row[0], row[1]): tuple(row[2:]) for row in rows},
    }


def inbox_troubles(engine: Engine) -> list[tuple[str, str, str | None]]:
    """Stored events that did not apply cleanly (failed, dead or quarantined)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(webhook_inbox.c.event_type, webhook_inbox.c.status, webhook_inbox.c.last_error).where(
                webhook_inbox.c.status.not_in(["applied", "ignored"])
            )
        ).all()
    return [tuple(row) for row in rows]


def diff(expected: State, actual: State) -> dict[str, Any]:
    """Per table, the keys whose values differ (expected, actual); empty when equal."""
    found: dict[str, Any] = {}
    for table, rows in expected.items():
        got = actual[table]
        bad = {
            key: (rows.get(key), got.get(key))
            for key in rows.keys() | got.keys()
            if rows.get(key) != got.get(key)
        }
        if bad:
            found[table] = bad
    return found


TABLES = ("organizations", "profiles", "organization_members")
# Each table is a handful of rows: one deletion is a third of it, past the default guard; an
# operator raises the guard for one run the same way.
ALLOW_DELETES = {"ops": {table: {"config": {"max_delete_fraction": 1.0}} for table in TABLES}}


def run_full_sync(instance: dg.DagsterInstance) -> None:
    """The ``clerk_full_sync`` job's three assets (its asset checks only report, and double its time)."""
    job = defs.resolve_job_def("clerk_full_sync").get_subset(
        asset_selection={dg.AssetKey(table) for table in TABLES}, asset_check_selection=set()
    )
    result = job.execute_in_process(run_config=ALLOW_DELETES, instance=instance, raise_on_error=False)
    failures = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    assert result.success, [str(e.event_specific_data.error) for e in failures]


# -- the properties -------------------------------------------------------------------------------


@CONVERGENCE
@given(history=histories, lossy=st.booleans(), data=st.data())
def test_any_delivery_then_a_full_sync_converges(
    engine: Engine, history: list[Operation], lossy: bool, data: st.DataObject
) -> None:
    """(b) with nothing dropped, the delivered events (and on-demand syncs) alone make the database
    equal Clerk; (a) whatever was dropped, one full sync afterwards does."""
    reset_database(engine)
    instance = dg.DagsterInstance.ephemeral()
    with fresh_clerk() as (emulator, client):
        world = World(emulator, client, engine, load_settings(), data.draw, lossy)
        run_history(world, history)
        trace = "\n".join(world.trace)
        assert inbox_troubles(engine) == [], trace
        expected = clerk_state(emulator)
        event("nothing dropped: (b) checked" if world.dropped == 0 else "events dropped")
        event(f"Clerk events: {world.emitted // 10 * 10}-{world.emitted // 10 * 10 + 9}")
        if world.dropped == 0:
            assert diff(expected, database_state(engine)) == {}, f"(b) before the full sync\n{trace}"
        wait_for_clock(emulator)
        run_full_sync(instance)
        assert diff(expected, database_state(engine)) == {}, f"(a) after the full sync\n{trace}"


def test_the_comparison_sees_what_only_the_full_sync_repairs(engine: Engine) -> None:
    """The properties have teeth: with an organization.created and a user.deleted dropped, the
    database is unlike Clerk in every table until the full sync."""
    settings = load_settings()
    with fresh_clerk() as (emulator, _):
        org = emulator.create_organization("Acme")
        users = [emulator.create_user(name, "Tester", f"{name}@example.com") for name in ("ada", "bob")]
        for user in users:
            emulator.create_membership(org["id"], user["id"])
        delivered = len(emulator.webhook_events)
        emulator.create_organization("Dropped Ltd")
        emulator.delete_user(users[0]["id"])
        for envelope in emulator.webhook_events[:delivered]:
            with engine.begin() as conn:
                store_event(conn, svix_id=_svix_id(), payload=envelope, handled=True)
        drain(engine, settings)
        assert inbox_troubles(engine) == []
        drifted = diff(clerk_state(emulator), database_state(engine))
        assert set(drifted) == {"organizations", "profiles", "organization_members"}, drifted
        wait_for_clock(emulator)
        run_full_sync(dg.DagsterInstance.ephemeral())
        assert diff(clerk_state(emulator), database_state(engine)) == {}
