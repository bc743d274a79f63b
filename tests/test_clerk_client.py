"""ClerkClient against the Clerk emulator over real loopback HTTP."""

import logging
import re
from collections.abc import Iterator

import pytest

from orgsync_pipeline.clerk.client import (
    CLERK_API_VERSION,
    PAGE_SIZE,
    ClerkAuthError,
    ClerkClient,
    ClerkError,
    ClerkRequestError,
    ClerkUnavailableError,
    RetryPolicy,
)
from orgsync_pipeline.clerk.emulator import ClerkEmulator

MEMBERS_PATH = re.compile(r"^/organizations/[^/]+/memberships$")
FAST_RETRY = RetryPolicy(
    max_attempts=4, base_delay=0.01, max_delay=0.05, max_elapsed=60.0, max_retry_after=30.0
)


@pytest.fixture
def emulator() -> Iterator[ClerkEmulator]:
    with ClerkEmulator() as emu:
        yield emu


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(emulator: ClerkEmulator, sleeps: list[float]) -> Iterator[ClerkClient]:
    with ClerkClient(
        emulator.secret_key, emulator.api_url, timeout=5.0, retry=FAST_RETRY, sleep=sleeps.append
    ) as c:
        yield c


def _requests_to(emulator: ClerkEmulator, path: str) -> list:
    return [r for r in emulator.requests if r.path == path]


# ---------------------------------------------------------------------- paging


def test_organizations_page_across_the_500_boundary(emulator: ClerkEmulator, client: ClerkClient) -> None:
    for i in range(1001):
        emulator.create_organization(f"Org {i}")

    pages = list(client.iter_organization_pages())

    assert [len(p) for p in pages] == [500, 500, 1]
    ids = [org["id"] for page in pages for org in page]
    assert len(ids) == len(set(ids)) == 1001
    assert set(ids) == set(emulator.organizations)
    listing = _requests_to(emulator, "/organizations")
    assert [r.param("offset") for r in listing] == ["0", "500", "1000"]
    assert all(r.param("limit") == "500" and r.param("order_by") == "+created_at" for r in listing)
    assert ids == list(emulator.organizations)  # oldest first


def test_full_last_page_stops_on_total_count(emulator: ClerkEmulator, client: ClerkClient) -> None:
    for i in range(1000):
        emulator.create_organization(f"Org {i}")

    assert len(client.list_organizations()) == 1000
    assert len(_requests_to(emulator, "/organizations")) == 2


def test_empty_instance_lists_nothing(client: ClerkClient) -> None:
    assert list(client.iter_organization_pages()) == []
    assert client.list_users() == []
    assert client.list_memberships() == []


def test_users_bare_array_paging(emulator: ClerkEmulator, client: ClerkClient) -> None:
    for i in range(501):
        emulator.create_user(f"First{i}", f"Last{i}", f"user{i}@example.com")

    pages = list(client.iter_user_pages())

    assert [len(p) for p in pages] == [500, 1]
    assert [u["id"] for p in pages for u in p] == list(emulator.users)
    listing = _requests_to(emulator, "/users")
    assert [r.param("offset") for r in listing] == ["0", "500"]
    assert all(r.param("limit") == "500" and r.param("order_by") == "+created_at" for r in listing)
    assert len(_requests_to(emulator, "/users/count")) == 1


def test_users_exact_multiple_of_page_size_stops_on_empty_page(
    emulator: ClerkEmulator, client: ClerkClient
) -> None:
    for i in range(PAGE_SIZE):
        emulator.create_user(None, None, f"user{i}@example.com")

    pages = list(client.iter_user_pages())

    assert [len(p) for p in pages] == [500]  # the empty closing page is not yielded
    assert len(_requests_to(emulator, "/users")) == 2


def test_memberships_come_from_the_instance_wide_listing(
    emulator: ClerkEmulator, client: ClerkClient
) -> None:
    emulator.seed_sample(organizations=200, users=400, memberships_per_org=3)

    memberships = client.list_memberships()

    assert {m["id"] for m in memberships} == set(emulator.memberships)
    assert len(memberships) == 600
    assert all(m["organization"]["id"] and m["public_user_data"]["user_id"] for m in memberships)
    assert [r.param("offset") for r in _requests_to(emulator, "/organization_memberships")] == ["0", "500"]
    assert not [r for r in emulator.requests if MEMBERS_PATH.match(r.path)]


def test_progress_is_logged(
    emulator: ClerkEmulator, client: ClerkClient, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(1001):
        emulator.create_organization(f"Org {i}")

    with caplog.at_level(logging.INFO, logger="orgsync_pipeline.clerk.client"):
        client.list_organizations()

    assert "organizations: page 1/3 (500/1001 records)" in caplog.messages
    assert "organizations: page 3/3 (1001/1001 records)" in caplog.messages


def test_deletion_mid_crawl_ends_without_looping(emulator: ClerkEmulator, client: ClerkClient) -> None:
    orgs = [emulator.create_organization(f"Org {i}")["id"] for i in range(1200)]

    def delete_first_org_after_page_one(method: str, path: str, query: dict[str, str]) -> None:
        if path == "/organizations" and query.get("offset") == "500":
            emulator.delete_organization(orgs[0])

    emulator.add_request_hook(delete_first_org_after_page_one)
    ids = [o["id"] for o in client.list_organizations()]

    assert len(ids) == len(set(ids))
    assert orgs[0] in ids  # seen on page 1, before it was deleted
    assert len(_requests_to(emulator, "/organizations")) == 3


def test_listing_that_keeps_growing_fails_instead_of_looping(
    emulator: ClerkEmulator, client: ClerkClient
) -> None:
    """A listing that never ends is not complete: the client raises rather than loop or return part of it."""
    emulator.create_organization("First")
    counter = iter(range(10**6))

    def grow(method: str, path: str, query: dict[str, str]) -> None:
        if path == "/organizations":
            for _ in range(600):
                emulator.create_organization(f"Grown {next(counter)}")

    emulator.add_request_hook(grow)
    with pytest.raises(ClerkError, match="did not end"):
        client.list_organizations()

    # The hook runs before each page is served, so the crawl starts at 601 records and gives up past offset
    # 2 * 601 + 10 * 500: 13 pages, instead of chasing the growth forever.
    assert len(_requests_to(emulator, "/organizations")) == 13


# ---------------------------------------------------------------------- counts and lookups


def test_counts(emulator: ClerkEmulator, client: ClerkClient) -> None:
    emulator.seed_sample(organizations=4, users=9, memberships_per_org=2)

    assert client.count_organizations() == 4
    assert client.count_users() == 9
    assert client.count_memberships() == 8


def test_point_lookups_return_none_on_404(emulator: ClerkEmulator, client: ClerkClient) -> None:
    org = emulator.create_organization("Acme Corp", "acme-corp")
    user = emulator.create_user("Jane", "Doe", "jane@example.com")

    assert client.get_organization(org["id"]) == org
    assert client.get_organization("acme-corp") == org
    assert client.get_user(user["id"]) == user
    assert client.get_organization("org_missing") is None
    assert client.get_user("user_missing") is None
    emulator.delete_user(user["id"])
    assert client.get_user(user["id"]) is None


def test_list_user_memberships(emulator: ClerkEmulator, client: ClerkClient) -> None:
    user = emulator.create_user("Jane", "Doe", "jane@example.com")
    other = emulator.create_user("John", "Roe", "john@example.com")
    orgs = [emulator.create_organization(f"Org {i}")["id"] for i in range(501)]
    for org_id in orgs:
        emulator.create_membership(org_id, user["id"])
    emulator.create_membership(orgs[0], other["id"], "org:admin")

    memberships = client.list_user_memberships(user["id"])

    assert memberships is not None
    assert [m["organization"]["id"] for m in memberships] == orgs
    assert {m["public_user_data"]["user_id"] for m in memberships} == {user["id"]}
    requests = _requests_to(emulator, f"/users/{user['id']}/organization_memberships")
    assert [r.param("limit") for r in requests] == ["500", "500"]
    assert client.list_user_memberships("user_missing") is None
    loner = emulator.create_user(None, None, None)
    assert client.list_user_memberships(loner["id"]) == []


# ---------------------------------------------------------------------- headers and auth


def test_headers_sent_on_every_request(emulator: ClerkEmulator, client: ClerkClient) -> None:
    emulator.seed_sample()
    client.list_organizations()
    client.list_users()
    client.get_user("user_missing")

    assert emulator.requests
    for record in emulator.requests:
        assert record.api_version == CLERK_API_VERSION
        assert record.has_authorization
        assert record.user_agent == "orgsync/0.1"
        assert record.status in (200, 404)


def test_trailing_slash_in_api_url_is_normalised(emulator: ClerkEmulator) -> None:
    emulator.seed_sample(organizations=2)
    with ClerkClient(emulator.secret_key, emulator.api_url + "/") as client:
        assert client.count_organizations() == 2
    assert emulator.requests[-1].path == "/organizations"


def test_wrong_key_fails_at_once_without_leaking_it(emulator: ClerkEmulator, sleeps: list[float]) -> None:
    key = "sk_test_wrong_key_d0n0tl3ak"
    with ClerkClient(key, emulator.api_url, retry=FAST_RETRY, sleep=sleeps.append) as client:
        with pytest.raises(ClerkAuthError) as info:
            client.list_organizations()
        assert key not in repr(client)

    assert len(emulator.requests) == 1
    assert sleeps == []
    assert info.value.status == 401
    assert info.value.code == "clerk_key_invalid"
    assert "clerk_key_invalid" in str(info.value) and "401" in str(info.value)
    assert key not in str(info.value) and key not in repr(info.value)


def test_other_4xx_fail_at_once(emulator: ClerkEmulator, client: ClerkClient, sleeps: list[float]) -> None:
    emulator.inject_fault("/organizations", 422)

    with pytest.raises(ClerkRequestError) as info:
        client.list_organizations()

    assert info.value.status == 422
    assert info.value.code == "form_param_value_invalid"
    assert info.value.trace_id
    assert len(emulator.requests) == 1
    assert sleeps == []


def test_404_on_a_listing_is_an_error(emulator: ClerkEmulator, client: ClerkClient) -> None:
    emulator.inject_fault("/users", 404)
    with pytest.raises(ClerkRequestError):
        client.list_users()


# ---------------------------------------------------------------------- retries


def test_429_honours_retry_after(emulator: ClerkEmulator, client: ClerkClient, sleeps: list[float]) -> None:
    for i in range(600):
        emulator.create_organization(f"Org {i}")
    emulator.inject_fault("/organizations", 429, retry_after=7, query={"offset": "500"})

    assert len(client.list_organizations()) == 600
    assert sleeps == [7.0]
    assert [r.status for r in _requests_to(emulator, "/organizations")] == [200, 429, 200]


def test_retry_after_is_capped(emulator: ClerkEmulator, sleeps: list[float]) -> None:
    policy = RetryPolicy(max_attempts=3, max_retry_after=5.0)
    emulator.inject_fault("/users/count", 429, retry_after=3600)
    with ClerkClient(emulator.secret_key, emulator.api_url, retry=policy, sleep=sleeps.append) as client:
        assert client.count_users() == 0
    assert sleeps == [5.0]


def test_429_without_retry_after_backs_off(
    emulator: ClerkEmulator, client: ClerkClient, sleeps: list[float]
) -> None:
    emulator.inject_fault("/users/count", 429, times=2)

    assert client.count_users() == 0
    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= FAST_RETRY.base_delay
    assert 0 <= sleeps[1] <= FAST_RETRY.base_delay * 2


def test_5xx_is_retried_then_succeeds(
    emulator: ClerkEmulator, client: ClerkClient, sleeps: list[float], caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(700):
        emulator.create_organization(f"Org {i}")
    emulator.inject_fault("/organizations", 503, times=2, query={"offset": "500"})

    with caplog.at_level(logging.WARNING, logger="orgsync_pipeline.clerk.client"):
        orgs = client.list_organizations()

    assert len({o["id"] for o in orgs}) == 700
    assert len(sleeps) == 2
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "HTTP 503" in warnings[0] and "attempt 1/4" in warnings[0]
    assert all(emulator.secret_key not in m for m in caplog.messages)


def test_5xx_forever_raises_and_returns_no_partial_listing(
    emulator: ClerkEmulator, client: ClerkClient, sleeps: list[float]
) -> None:
    for i in range(700):
        emulator.create_organization(f"Org {i}")
    emulator.inject_fault("/organizations", 500, times=-1, query={"offset": "500"})

    result = None
    with pytest.raises(ClerkUnavailableError) as info:
        result = client.list_organizations()

    assert result is None
    assert info.value.attempts == FAST_RETRY.max_attempts
    assert "4 times" in str(info.value) and "HTTP 500" in str(info.value)
    assert len(sleeps) == FAST_RETRY.max_attempts - 1
    assert len(_requests_to(emulator, "/organizations")) == 1 + FAST_RETRY.max_attempts

    pages = client.iter_organization_pages()
    assert len(next(pages)) == 500
    with pytest.raises(ClerkUnavailableError):
        next(pages)


def test_max_elapsed_bounds_the_retries(emulator: ClerkEmulator, sleeps: list[float]) -> None:
    policy = RetryPolicy(max_attempts=10, max_elapsed=20.0)
    emulator.inject_fault("/users/count", 429, times=-1, retry_after=8)
    client = ClerkClient(emulator.secret_key, emulator.api_url, retry=policy, sleep=sleeps.append)
    with client, pytest.raises(ClerkUnavailableError) as info:
        client.count_users()
    assert sleeps == [8.0, 8.0]  # a third wait would pass 20 s
    assert info.value.attempts == 3


def test_timeouts_are_retried(emulator: ClerkEmulator, sleeps: list[float]) -> None:
    emulator.seed_sample(organizations=3)
    # Status 200 with a delay: the first request stalls past the client timeout, the retry is served.
    emulator.inject_fault("/organizations", 200, delay_seconds=2.0)
    with ClerkClient(
        emulator.secret_key, emulator.api_url, timeout=0.2, retry=FAST_RETRY, sleep=sleeps.append
    ) as c:
        assert len(c.list_organizations()) == 3
    assert len(sleeps) == 1


def test_timeouts_forever_raise_unavailable(emulator: ClerkEmulator, sleeps: list[float]) -> None:
    emulator.inject_fault("/users/count", 503, times=-1, delay_seconds=2.0)
    policy = RetryPolicy(max_attempts=2, base_delay=0.01)
    client = ClerkClient(
        emulator.secret_key, emulator.api_url, timeout=0.1, retry=policy, sleep=sleeps.append
    )
    with client, pytest.raises(ClerkUnavailableError) as info:
        client.count_users()
    assert "ReadTimeout" in info.value.last_cause
    assert info.value.attempts == 2


def test_connection_refused_raises_unavailable(emulator: ClerkEmulator, sleeps: list[float]) -> None:
    api_url = emulator.api_url
    emulator.stop()
    policy = RetryPolicy(max_attempts=3, base_delay=0.01)
    client = ClerkClient(emulator.secret_key, api_url, timeout=1.0, retry=policy, sleep=sleeps.append)
    with client, pytest.raises(ClerkUnavailableError) as info:
        client.list_users()
    assert "ConnectError" in str(info.value)
    assert emulator.secret_key not in str(info.value)
    assert len(sleeps) == 2
