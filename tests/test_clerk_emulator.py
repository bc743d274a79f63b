"""The Clerk emulator speaks Clerk's shapes, errors and semantics (raw httpx, no orgsync client)."""

import itertools
import time
from collections.abc import Iterator

import httpx
import pytest

from orgsync_pipeline.clerk.emulator import ClerkEmulator


@pytest.fixture
def emulator() -> Iterator[ClerkEmulator]:
    """An emulator on a port of its own: its URL keys a rate limiter no other test has used."""
    with ClerkEmulator() as emu:
        yield emu


@pytest.fixture
def http(emulator: ClerkEmulator) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {emulator.secret_key}", "Clerk-API-Version": "2025-11-10"}
    with httpx.Client(base_url=emulator.api_url + "/", headers=headers, timeout=5.0) as client:
        yield client


def test_auth_errors(emulator: ClerkEmulator, http: httpx.Client) -> None:
    missing = httpx.get(f"{emulator.api_url}/users")
    wrong = http.get("users", headers={"Authorization": "Bearer sk_test_nope"})
    malformed = http.get("users", headers={"Authorization": emulator.secret_key})

    assert missing.status_code == wrong.status_code == malformed.status_code == 401
    assert missing.json()["errors"][0]["code"] == "authorization_header_format_invalid"
    assert malformed.json()["errors"][0]["code"] == "authorization_header_format_invalid"
    body = wrong.json()
    assert body["errors"][0]["code"] == "clerk_key_invalid"
    assert set(body["errors"][0]) == {"message", "long_message", "code"} and body["clerk_trace_id"]
    assert [r.has_authorization for r in emulator.requests] == [False, True, True]


def test_listing_shapes_and_validation(emulator: ClerkEmulator, http: httpx.Client) -> None:
    emulator.seed_sample(organizations=3, users=5, memberships_per_org=2)

    orgs = http.get("organizations").json()
    assert orgs["total_count"] == 3 and [o["object"] for o in orgs["data"]] == ["organization"] * 3
    created = [o["created_at"] for o in orgs["data"]]
    assert created == sorted(created, reverse=True)  # default -created_at
    assert isinstance(http.get("users").json(), list)  # bare array
    assert http.get("users/count").json() == {"object": "total_count", "total_count": 5}
    mems = http.get("organization_memberships", params={"limit": 500}).json()
    assert mems["total_count"] == 6
    assert {m["role"] for m in mems["data"]} == {"org:admin", "org:member"}
    with_counts = http.get("organizations", params={"include_members_count": "true"}).json()
    assert {o["members_count"] for o in with_counts["data"]} == {2}

    for params in ({"limit": 0}, {"limit": 501}, {"offset": -1}, {"order_by": "bogus"}):
        answer = http.get("organizations", params=params)
        assert answer.status_code == 422, params
        assert answer.json()["errors"][0]["code"] == "form_param_value_invalid"
    unknown = http.get("nope")
    assert unknown.status_code == 404 and unknown.json()["errors"][0]["code"] == "resource_not_found"
    assert http.get("organizations/org_missing").status_code == 404
    assert http.get("organizations/org_missing/memberships").status_code == 404
    assert http.get("users/user_missing/organization_memberships").status_code == 404


def test_membership_shape_and_filters(emulator: ClerkEmulator, http: httpx.Client) -> None:
    org = emulator.create_organization("Acme Corp")
    jane = emulator.create_user("Jane", "Doe", "jane@acme.com", username="jdoe")
    john = emulator.create_user("John", "Roe", None)
    emulator.create_membership(org["id"], jane["id"], "org:admin")
    emulator.create_membership(org["id"], john["id"])

    page = http.get(f"organizations/{org['slug']}/memberships", params={"user_id": jane["id"]}).json()

    assert page["total_count"] == 1
    mem = page["data"][0]
    assert mem["id"].startswith("orgmem_") and mem["role_name"] == "Admin" and mem["permissions"] == []
    assert mem["organization"] == org
    assert mem["public_user_data"] == {
        "user_id": jane["id"],
        "first_name": "Jane",
        "last_name": "Doe",
        "image_url": jane["image_url"],
        "profile_image_url": jane["image_url"],
        "has_image": False,
        "identifier": "jane@acme.com",
        "username": "jdoe",
    }
    with pytest.raises(ValueError):
        emulator.create_membership(org["id"], jane["id"])


def test_mutations_follow_clerk_semantics(emulator: ClerkEmulator, http: httpx.Client) -> None:
    org = emulator.create_organization("Acme Corp")
    user = emulator.create_user("Jane", "Doe", "jane@acme.com")
    mem = emulator.create_membership(org["id"], user["id"])
    assert org["id"].startswith("org_") and len(org["id"]) == 4 + 27
    assert org["slug"] == "acme-corp"
    assert emulator.create_organization("Acme Corp")["slug"] == "acme-corp-2"
    with pytest.raises(ValueError):
        emulator.create_organization("Other", "acme-corp")

    renamed = emulator.update_organization(org["id"], name="Acme Inc")
    assert renamed["updated_at"] > org["updated_at"]
    assert emulator.get_membership(org["id"], user["id"])["organization"]["name"] == "Acme Inc"

    changed = emulator.update_user(user["id"], email="jane@new.example")
    primary = [e for e in changed["email_addresses"] if e["id"] == changed["primary_email_address_id"]]
    assert primary[0]["email_address"] == "jane@new.example" and primary[0]["id"].startswith("idn_")
    assert changed["updated_at"] > renamed["updated_at"]
    assert (
        emulator.update_membership(org["id"], user["id"], role="org:admin")["updated_at"] > mem["updated_at"]
    )

    assert emulator.delete_organization(org["id"]) == {
        "object": "organization",
        "id": org["id"],
        "slug": "acme-corp",
        "deleted": True,
    }
    assert emulator.get_membership(org["id"], user["id"]) is None
    assert http.get(f"users/{user['id']}/organization_memberships").json() == {"data": [], "total_count": 0}
    assert emulator.delete_user(user["id"]) == {"object": "user", "id": user["id"], "deleted": True}
    assert http.get(f"users/{user['id']}").status_code == 404


def test_hidden_user_is_missing_from_listings_only(emulator: ClerkEmulator, http: httpx.Client) -> None:
    users = [emulator.create_user(f"U{i}", None, f"u{i}@example.com") for i in range(3)]
    emulator.hide_user_from_listing(users[1]["id"])

    assert [u["id"] for u in http.get("users", params={"order_by": "+created_at"}).json()] == [
        users[0]["id"],
        users[2]["id"],
    ]
    assert http.get("users/count").json()["total_count"] == 2
    assert http.get(f"users/{users[1]['id']}").json()["id"] == users[1]["id"]


def test_seed_sample_is_deterministic() -> None:
    def names(emu: ClerkEmulator) -> list[tuple]:
        users = [(u["first_name"], u["email_addresses"][0]["email_address"]) for u in emu.users.values()]
        orgs = [(o["name"], o["slug"]) for o in emu.organizations.values()]
        roles = sorted(m["role"] for m in emu.memberships.values())
        return [*users, *orgs, *roles]

    first, second = ClerkEmulator(id_seed=1), ClerkEmulator(id_seed=1)
    first.seed_sample(seed=3)
    second.seed_sample(seed=3)
    assert names(first) == names(second)
    assert list(first.memberships) == list(second.memberships)  # same ids, thanks to id_seed
    assert len(first.memberships) == 15
    assert sum(m["role"] == "org:admin" for m in first.memberships.values()) == 5


def test_faults_and_hooks(emulator: ClerkEmulator, http: httpx.Client) -> None:
    emulator.inject_fault("/organizations", 429, retry_after=3, query={"offset": "500"})
    emulator.inject_fault("/users", 502, times=2)
    seen: list[tuple[str, str]] = []
    emulator.add_request_hook(lambda method, path, query: seen.append((method, path)))

    assert http.get("organizations").status_code == 200  # query does not match
    limited = http.get("organizations", params={"offset": 500})
    assert limited.status_code == 429 and limited.headers["Retry-After"] == "3"
    assert limited.json()["errors"][0]["code"] == "too_many_requests"
    assert [http.get("users").status_code for _ in range(3)] == [502, 502, 200]
    assert seen == [("GET", "/organizations"), ("GET", "/users")]
    assert emulator.requests[-1].api_version == "2025-11-10"
    assert http.get("users", headers={"Clerk-API-Version": "latest"}).status_code == 400


def test_rate_limit() -> None:
    with ClerkEmulator(rate_limit=3, rate_window_seconds=60) as emu:
        headers = {"Authorization": f"Bearer {emu.secret_key}"}
        statuses = [httpx.get(f"{emu.api_url}/users", headers=headers).status_code for _ in range(4)]
        limited = httpx.get(f"{emu.api_url}/users", headers=headers)
    assert statuses == [200, 200, 200, 429]
    assert 1 <= int(limited.headers["Retry-After"]) <= 60


def test_clock_and_envelope(emulator: ClerkEmulator) -> None:
    before = int(time.time() * 1000)
    stamps = [emulator.create_organization(f"Org {i}")["created_at"] for i in range(50)]
    assert stamps[0] >= before and all(b > a for a, b in itertools.pairwise(stamps))

    user = emulator.create_user("Jane", None, None)
    event = emulator.event_envelope("user.created", user, timestamp_ms=1716883200000)
    assert event["object"] == "event" and event["type"] == "user.created"
    assert event["timestamp"] == 1716883200000 and event["instance_id"].startswith("ins_")
    assert event["data"] == user
