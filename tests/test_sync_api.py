"""On-demand sync (POST /sync/me, /sync/organizations/{id}) over real HTTP: the receiver under uvicorn,
a real PostgreSQL and the Clerk emulator, which serves the JWKS and mints the session tokens."""

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import httpx
import jwt
import pytest
import sqlalchemy as sa
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy.engine import Engine

from orgsync_pipeline.clerk.emulator import ClerkEmulator, SessionTokenMinter
from orgsync_pipeline.rows import MembershipRow, ProfileRow
from orgsync_pipeline.settings import load_settings
from orgsync_pipeline.store import apply
from orgsync_pipeline.store.schema import (
    membership_tombstones,
    organization_members,
    organizations,
    profiles,
    sync_quarantine,
)
from orgsync_pipeline.store.write_log import write_log
from orgsync_pipeline.webhooks import create_app, serve_in_thread

APP_ORIGIN = "http://localhost:3000"
TABLES = (organizations, profiles, organization_members, membership_tombstones, sync_quarantine, write_log)


@dataclass
class Api:
    """The receiver's sync API on a loopback port, and the emulator it reads Clerk from."""

    url: str
    emulator: ClerkEmulator

    def post(
        self, path: str, token: str | None = None, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        return httpx.post(f"{self.url}{path}", headers=sent, timeout=60)

    def sync_me(self, user_id: str, **token: Any) -> httpx.Response:
        return self.post("/sync/me", self.emulator.session_token(user_id, **token))

    def sync_org(self, user_id: str, org_id: str, **token: Any) -> httpx.Response:
        return self.post(
            f"/sync/organizations/{org_id}", self.emulator.session_token(user_id, org_id, **token)
        )


@pytest.fixture
def make_api(
    database_url: str, webhook_secret: str, emulator: ClerkEmulator, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., Api]]:
    """Start a receiver with extra environment settings (the defaults otherwise)."""
    monkeypatch.setenv("ORGSYNC_WEBHOOK_APPLY", "sensor")
    with ExitStack() as stack:

        def make(**env: str) -> Api:
            for name, value in env.items():
                monkeypatch.setenv(name, value)
            return Api(stack.enter_context(serve_in_thread(create_app(load_settings()))), emulator)

        yield make


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    return make_api(ORGSYNC_AUTHORIZED_PARTIES=APP_ORIGIN)


def new_user(emulator: ClerkEmulator, name: str) -> str:
    return emulator.create_user(name.title(), "Tester", f"{name}@example.com")["id"]


def new_org(emulator: ClerkEmulator, name: str, members: dict[str, str]) -> str:
    org_id = emulator.create_organization(name)["id"]
    for user_id, role in members.items():
        emulator.create_membership(org_id, user_id, role)
    return org_id


def members_of(engine: Engine, column: sa.Column, value: str) -> dict[tuple[str, str], str]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                organization_members.c.organization_id,
                organization_members.c.user_id,
                organization_members.c.role,
            ).where(column == value)
        ).all()
    return {(org, user): role for org, user, role in rows}


def table_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            table.name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            for table in TABLES
        }


def clerk_data_requests(emulator: ClerkEmulator, path_prefix: str = "/") -> list[str]:
    """Paths of requests for Clerk data (the JWKS is not data)."""
    return [r.path for r in emulator.requests if r.path != "/jwks" and r.path.startswith(path_prefix)]


# ------------------------------------------------------------------ what lands


def test_sync_me_lands_profile_memberships_and_organizations(api: Api, engine: Engine) -> None:
    emulator = api.emulator
    ada, bob = new_user(emulator, "ada"), new_user(emulator, "bob")
    acme = new_org(emulator, "Acme", {ada: "org:admin", bob: "org:member"})
    globex = new_org(emulator, "Globex", {ada: "org:member"})

    response = api.sync_me(ada)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "synced" and body["target"] == {"type": "user", "id": ada}
    assert body["counts"]["organization_members"]["inserted"] == 2
    assert isinstance(body["elapsed_ms"], float)
    assert members_of(engine, organization_members.c.user_id, ada) == {
        (acme, ada): "admin",
        (globex, ada): "member",
    }
    with engine.connect() as conn:
        assert conn.execute(sa.select(profiles.c.email).where(profiles.c.id == ada)).scalar_one() == (
            "ada@example.com"
        )
        assert set(conn.execute(sa.select(organizations.c.id, organizations.c.name)).all()) == {
            (acme, "Acme"),
            (globex, "Globex"),
        }
        # Bob is in Acme, but /sync/me refreshes the caller only.
        assert conn.execute(sa.select(profiles.c.id).where(profiles.c.id == bob)).first() is None
        logged = dict(
            conn.execute(
                sa.select(write_log.c.table_name, sa.func.sum(write_log.c.rows))
                .where(write_log.c.path == "on_demand")
                .group_by(write_log.c.table_name)
            ).all()
        )
    assert logged == {"organizations": 2, "profiles": 1, "organization_members": 2}


def test_sync_me_again_writes_nothing_new(api: Api, engine: Engine) -> None:
    ada = new_user(api.emulator, "ada")
    new_org(api.emulator, "Acme", {ada: "org:admin"})
    assert api.sync_me(ada).status_code == 200
    before = table_counts(engine)

    again = api.sync_me(ada)

    assert again.status_code == 200
    assert again.json()["counts"]["organization_members"] == {
        "inserted": 0, "updated": 0, "unchanged": 1, "fetched": 1, "deleted": 0
    }  # fmt: skip
    assert table_counts(engine) == before  # newer-wins: nothing changed, nothing written or logged


def test_sync_organization_lands_every_page_and_deletes_only_from_a_complete_listing(
    api: Api, engine: Engine
) -> None:
    emulator = api.emulator
    admin = new_user(emulator, "admin")
    org_id = new_org(emulator, "Big", {admin: "org:admin"})
    users = [new_user(emulator, f"member{i}") for i in range(505)]
    for user_id in users:
        emulator.create_membership(org_id, user_id)

    response = api.sync_org(admin, org_id, version=1)  # session token v1: org_id claim

    assert response.status_code == 200, response.text
    assert response.json()["counts"]["organization_members"]["inserted"] == 506
    assert len(members_of(engine, organization_members.c.organization_id, org_id)) == 506
    offsets = [
        r.param("offset") for r in emulator.requests if r.path == f"/organizations/{org_id}/memberships"
    ]
    assert offsets == ["0", "500"]

    # Clerk removes a member; the second page of the next listing fails: nothing may be deleted.
    emulator.delete_membership(org_id, users[0])
    emulator.inject_fault(f"/organizations/{org_id}/memberships", 500, times=-1, query={"offset": "500"})
    failed = api.sync_org(admin, org_id)
    assert failed.status_code == 503 and failed.headers["Retry-After"]
    assert len(members_of(engine, organization_members.c.organization_id, org_id)) == 506

    emulator.clear_faults()
    complete = api.sync_org(admin, org_id)
    assert complete.status_code == 200, complete.text
    assert complete.json()["counts"]["organization_members"]["deleted"] == 1
    remaining = members_of(engine, organization_members.c.organization_id, org_id)
    assert len(remaining) == 505 and (org_id, users[0]) not in remaining
    with engine.connect() as conn:
        assert conn.execute(
            sa.select(membership_tombstones.c.user_id).where(
                membership_tombstones.c.organization_id == org_id
            )
        ).scalars().all() == [users[0]]


def test_sync_me_deletes_a_membership_clerk_no_longer_lists(api: Api, engine: Engine) -> None:
    emulator = api.emulator
    ada = new_user(emulator, "ada")
    acme = new_org(emulator, "Acme", {ada: "org:admin"})
    globex = new_org(emulator, "Globex", {ada: "org:member"})
    assert api.sync_me(ada).status_code == 200

    emulator.delete_membership(globex, ada)
    response = api.sync_me(ada)

    assert response.status_code == 200
    assert response.json()["counts"]["organization_members"]["deleted"] == 1
    assert members_of(engine, organization_members.c.user_id, ada) == {(acme, ada): "admin"}


def test_a_membership_written_after_the_listing_began_is_not_deleted(api: Api, engine: Engine) -> None:
    emulator = api.emulator
    admin, late = new_user(emulator, "admin"), new_user(emulator, "late")
    org_id = new_org(emulator, "Acme", {admin: "org:admin"})
    assert api.sync_org(admin, org_id).status_code == 200
    written = threading.Event()

    def webhook_lands_during_the_listing(method: str, path: str, query: dict[str, str]) -> None:
        # As if a webhook for a membership Clerk has only just created committed while we list.
        if path == f"/organizations/{org_id}/memberships" and not written.is_set():
            now = emulator.now_ms()
            with engine.begin() as conn:
                apply.apply_memberships(
                    conn,
                    [MembershipRow("orgmem_late", org_id, late, "member", "org:member", now, now)],
                    profile_stubs=[ProfileRow(late, None, "Late", None, None, None, None)],
                    source="webhook",
                )
            written.set()

    emulator.add_request_hook(webhook_lands_during_the_listing)
    response = api.sync_org(admin, org_id)

    assert response.status_code == 200, response.text
    assert written.is_set()
    assert members_of(engine, organization_members.c.organization_id, org_id) == {
        (org_id, admin): "admin",
        (org_id, late): "member",
    }


def test_a_404_soft_deletes_the_user_or_the_organization(api: Api, engine: Engine) -> None:
    emulator = api.emulator
    ada, bob = new_user(emulator, "ada"), new_user(emulator, "bob")
    acme = new_org(emulator, "Acme", {ada: "org:admin", bob: "org:member"})
    assert api.sync_org(ada, acme).status_code == 200
    assert len(members_of(engine, organization_members.c.organization_id, acme)) == 2

    emulator.delete_user(bob)
    gone_user = api.sync_me(bob)
    assert gone_user.status_code == 200 and gone_user.json()["status"] == "deleted"
    emulator.delete_organization(acme)
    gone_org = api.sync_org(ada, acme)
    assert gone_org.status_code == 200 and gone_org.json()["found"] is False

    with engine.connect() as conn:
        deleted = dict(conn.execute(sa.select(profiles.c.id, profiles.c.deleted_at.is_not(None))).all())
        assert deleted == {ada: False, bob: True}
        org_deleted = conn.execute(sa.select(organizations.c.deleted_at).where(organizations.c.id == acme))
        assert org_deleted.scalar_one() is not None
    assert members_of(engine, organization_members.c.organization_id, acme) == {}


# ------------------------------------------------------------------ refusals write nothing


def _forged(emulator: ClerkEmulator, user_id: str) -> str:
    """Clerk's claims and kid, signed with a key that is not Clerk's."""
    real = jwt.decode(emulator.session_token(user_id), options={"verify_signature": False})
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(real, other, algorithm="RS256", headers={"kid": emulator.tokens.current_kid})


def _alg_none(emulator: ClerkEmulator, user_id: str) -> str:
    real = jwt.decode(emulator.session_token(user_id), options={"verify_signature": False})
    return jwt.encode(real, None, algorithm="none", headers={"kid": emulator.tokens.current_kid})


def _hs256_with_public_key(emulator: ClerkEmulator, user_id: str) -> str:
    """The classic confusion attack: HMAC-signed with the public key as the secret (PyJWT refuses to
    sign that, so it is signed by hand)."""
    claims = jwt.decode(emulator.session_token(user_id), options={"verify_signature": False})

    def part(value: Any) -> bytes:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=")

    signing_input = part({"alg": "HS256", "typ": "JWT"}) + b"." + part(claims)
    key = emulator.tokens.public_key_pem().encode()
    signature = base64.urlsafe_b64encode(hmac.new(key, signing_input, hashlib.sha256).digest()).rstrip(b"=")
    return (signing_input + b"." + signature).decode()


REFUSALS: dict[str, tuple[Callable[[ClerkEmulator, str, str, str], dict[str, str]], str, int, str]] = {
    "missing": (lambda e, u, o, other: {}, "/sync/me", 401, "missing"),
    "not bearer": (lambda e, u, o, other: {"Authorization": "Basic dXNlcjpwYXNz"}, "/sync/me", 401, "Bearer"),
    "garbage": (lambda e, u, o, other: {"Authorization": "Bearer not-a-jwt"}, "/sync/me", 401, "malformed"),
    "machine token": (
        lambda e, u, o, other: {"Authorization": "Bearer ak_123"},
        "/sync/me",
        401,
        "malformed",
    ),
    "expired": (
        lambda e, u, o, other: {
            "Authorization": f"Bearer {e.session_token(u, issued_at=int(time.time()) - 600)}"
        },
        "/sync/me",
        401,
        "expired",
    ),
    "forged signature": (
        lambda e, u, o, other: {"Authorization": f"Bearer {_forged(e, u)}"},
        "/sync/me",
        401,
        "signature",
    ),
    "alg none": (
        lambda e, u, o, other: {"Authorization": f"Bearer {_alg_none(e, u)}"},
        "/sync/me",
        401,
        "none",
    ),
    "hs256 with the public key": (
        lambda e, u, o, other: {"Authorization": f"Bearer {_hs256_with_public_key(e, u)}"},
        "/sync/me",
        401,
        "HS256",
    ),
    "unknown key": (
        lambda e, u, o, other: {"Authorization": f"Bearer {SessionTokenMinter().mint(u)}"},
        "/sync/me",
        401,
        "unknown key",
    ),
    "wrong azp": (
        lambda e, u, o, other: {"Authorization": f"Bearer {e.session_token(u, azp='https://evil.example')}"},
        "/sync/me",
        401,
        "azp",
    ),
    "other organization (v2)": (
        lambda e, u, o, other: {"Authorization": f"Bearer {e.session_token(u, other)}"},
        "/sync/organizations/{org}",
        403,
        "active organization",
    ),
    "other organization (v1)": (
        lambda e, u, o, other: {"Authorization": f"Bearer {e.session_token(u, other, version=1)}"},
        "/sync/organizations/{org}",
        403,
        "active organization",
    ),
    "no active organization": (
        lambda e, u, o, other: {"Authorization": f"Bearer {e.session_token(u)}"},
        "/sync/organizations/{org}",
        403,
        "active organization",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_request_writes_nothing(api: Api, engine: Engine, case: str) -> None:
    emulator = api.emulator
    ada = new_user(emulator, "ada")
    acme = new_org(emulator, "Acme", {ada: "org:admin"})
    globex = new_org(emulator, "Globex", {ada: "org:admin"})
    headers_for, path, status, reason = REFUSALS[case]

    response = api.post(path.format(org=acme), headers=headers_for(emulator, ada, acme, globex))

    assert response.status_code == status, response.text
    assert reason in response.json()["error"]
    assert all(count == 0 for count in table_counts(engine).values()), table_counts(engine)
    assert clerk_data_requests(emulator) == []


@pytest.mark.parametrize("version", [1, 2])
def test_the_active_organization_is_read_from_both_token_shapes(
    api: Api, engine: Engine, version: int
) -> None:
    ada = new_user(api.emulator, "ada")
    acme = new_org(api.emulator, "Acme", {ada: "org:admin"})

    response = api.sync_org(ada, acme, version=version)

    assert response.status_code == 200, response.text
    assert members_of(engine, organization_members.c.organization_id, acme) == {(acme, ada): "admin"}


def test_past_the_per_user_limit_answers_429_and_writes_nothing(
    make_api: Callable[..., Api], engine: Engine
) -> None:
    api = make_api(ORGSYNC_SYNC_RATE_PER_MINUTE="2")
    emulator = api.emulator
    ada, bob = new_user(emulator, "ada"), new_user(emulator, "bob")
    acme = new_org(emulator, "Acme", {ada: "org:admin", bob: "org:member"})
    assert api.sync_me(ada).status_code == 200
    assert api.sync_org(ada, acme).status_code == 200
    emulator.update_organization(acme, name="Acme Renamed")

    refused = api.sync_org(ada, acme)

    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) >= 1
    with engine.connect() as conn:
        assert conn.execute(sa.select(organizations.c.name)).scalar_one() == "Acme"
    assert api.sync_org(bob, acme).status_code == 200  # the limit is per user
    with engine.connect() as conn:
        assert conn.execute(sa.select(organizations.c.name)).scalar_one() == "Acme Renamed"


@pytest.mark.parametrize("failing", ["/users/{user}", "/users/{user}/organization_memberships", "/jwks"])
def test_clerk_unavailable_answers_503_and_writes_nothing(api: Api, engine: Engine, failing: str) -> None:
    ada = new_user(api.emulator, "ada")
    new_org(api.emulator, "Acme", {ada: "org:admin"})
    api.emulator.inject_fault(failing.format(user=ada), 503, times=-1)

    response = api.sync_me(ada)

    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    assert all(count == 0 for count in table_counts(engine).values())


def test_database_unavailable_answers_503(make_api: Callable[..., Api]) -> None:
    api = make_api(DATABASE_URL="postgresql://postgres@127.0.0.1:9/nowhere")
    ada = new_user(api.emulator, "ada")

    response = api.sync_me(ada)

    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"]


# ------------------------------------------------------------------ keys, coalescing, browsers


def test_networkless_with_clerk_jwt_key(make_api: Callable[..., Api], emulator: ClerkEmulator) -> None:
    # As a .env file holds it: one line, newlines written as \n.
    api = make_api(CLERK_JWT_KEY=emulator.tokens.public_key_pem().replace("\n", "\\n"))
    ada = new_user(api.emulator, "ada")

    assert api.sync_me(ada).status_code == 200
    assert [r.path for r in api.emulator.requests if r.path == "/jwks"] == []
    assert api.post("/sync/me", _forged(api.emulator, ada)).status_code == 401


def test_a_rotated_signing_key_is_fetched_once(api: Api) -> None:
    ada = new_user(api.emulator, "ada")
    assert api.sync_me(ada).status_code == 200
    api.emulator.tokens.rotate_key()

    assert api.sync_me(ada).status_code == 200
    assert api.sync_me(ada).status_code == 200
    assert [r.path for r in api.emulator.requests].count("/jwks") == 2


def test_concurrent_requests_for_one_organization_share_one_clerk_fetch(api: Api, engine: Engine) -> None:
    emulator = api.emulator
    ada, bob = new_user(emulator, "ada"), new_user(emulator, "bob")
    acme = new_org(emulator, "Acme", {ada: "org:admin", bob: "org:member"})
    fetching, release = threading.Event(), threading.Event()
    fetches: list[str] = []

    def hold_the_first_fetch(method: str, path: str, query: dict[str, str]) -> None:
        if path == f"/organizations/{acme}":
            fetches.append(path)
            fetching.set()
            release.wait(timeout=30)

    emulator.add_request_hook(hold_the_first_fetch)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(api.sync_org, ada, acme)
        assert fetching.wait(timeout=30)
        second = pool.submit(api.sync_org, bob, acme)
        time.sleep(1.0)  # lets the second request reach the server while the first fetch is held
        release.set()
        answers = [first.result(timeout=60), second.result(timeout=60)]

    assert [a.status_code for a in answers] == [200, 200]
    assert fetches == [f"/organizations/{acme}"]
    assert sorted(a.json()["coalesced"] for a in answers) == [False, True]
    assert answers[0].json()["counts"] == answers[1].json()["counts"]
    assert len(members_of(engine, organization_members.c.organization_id, acme)) == 2


def test_cors_preflight_only_for_configured_origins(make_api: Callable[..., Api]) -> None:
    def preflight(api: Api, origin: str) -> httpx.Response:
        return httpx.options(
            f"{api.url}/sync/me",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization",
            },
        )

    closed = make_api()
    assert "access-control-allow-origin" not in preflight(closed, APP_ORIGIN).headers

    api = make_api(ORGSYNC_CORS_ORIGINS=f"{APP_ORIGIN}, https://app.example.com/")
    allowed = preflight(api, "https://app.example.com")
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    refused = preflight(api, "https://evil.example")
    assert refused.status_code == 400
    assert "access-control-allow-origin" not in refused.headers

    ada = new_user(api.emulator, "ada")
    answer = api.post("/sync/me", api.emulator.session_token(ada), headers={"Origin": APP_ORIGIN})
    assert answer.status_code == 200
    assert answer.headers["access-control-allow-origin"] == APP_ORIGIN


def test_emulator_jwks_verifies_both_token_shapes(emulator: ClerkEmulator) -> None:
    ada = new_user(emulator, "ada")
    acme = new_org(emulator, "Acme", {ada: "org:admin"})
    keys = httpx.get(
        f"{emulator.api_url}/jwks", headers={"Authorization": f"Bearer {emulator.secret_key}"}
    ).json()["keys"]
    public = jwt.PyJWK(keys[0]).key
    pem = public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    v2 = jwt.decode(emulator.session_token(ada, acme), pem, algorithms=["RS256"])
    v1 = jwt.decode(emulator.session_token(ada, acme, version=1), pem, algorithms=["RS256"])

    assert v2["sub"] == v1["sub"] == ada
    assert v2["v"] == 2 and v2["o"]["id"] == acme and v2["o"]["rol"] == "admin" and v2["o"]["slg"] == "acme"
    assert v1["org_id"] == acme and v1["org_role"] == "org:admin" and "v" not in v1
    assert jwt.get_unverified_header(emulator.session_token(ada))["kid"] == keys[0]["kid"]
