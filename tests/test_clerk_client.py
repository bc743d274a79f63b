"""ClerkClient against the Clerk emulator over real loopback HTTP."""

import logging
import re
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

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
from orgsync_pipeline.clerk.paging import run_concurrently
from orgsync_pipeline.clerk.ratelimit import RateLimiter, default_rate_limit

MEMBERS_PATH = re.compile(r"^/organizations/[^/]+/memberships$")
FAST_RETRY = RetryPolicy(
    max_attempts=4, base_delay=0.01, max_delay=0.05, max_elapsed=60.0, max_retry_after=30.0
)


@pytest.fixture
def emulator() -> Iterator[ClerkEmulator]:
    """An emulator on a port of its own: its URL keys a rate limiter no other test has used."""
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


def _records(pages: Iterator[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    return [record for page in pages for record in page]


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

    assert len(_records(client.iter_organization_pages())) == 1000
    assert len(_requests_to(emulator, "/organizations")) == 2


def test_empty_instance_lists_nothing(client: ClerkClient) -> None:
    assert list(client.iter_organization_pages()) == []
    assert _records(client.iter_user_pages()) == []
    assert _records(client.iter_membership_pages()) == []


def test_users_bare_array_paging(emulator: ClerkEmulator, client: ClerkClient) -> None:
    for i in range(501):
        emulator.create_user(f"First{i}", f"Last{i}", f"user{i}@example.com")

    pages = list(client.iter_user_pages())

    assert [len(p) for p in pages] == [500, 1]
    assert [u["id"] for p in pages for u in p] == list(emulator.users)
    listing = _requests_to(emulator, "/users")
    # The count sizes the listing, so both pages are requested at once: in either order.
    assert sorted(r.param("offset") for r in listing) == ["0", "500"]
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

    memberships = _records(client.iter_membership_pages())

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
        _records(client.iter_organization_pages())

    assert "organizations: page 1/3 (500/1001 records)" in caplog.messages
    assert "organizations: page 3/3 (1001/1001 records)" in caplog.messages


def test_deletion_mid_crawl_ends_without_looping(emulator: ClerkEmulator, client: ClerkClient) -> None:
    orgs = [emulator.create_organization(f"Org {i}")["id"] for i in range(1200)]

    def delete_first_org_after_page_one(method: str, path: str, query: dict[str, str]) -> None:
        if path == "/organizations" and query.get("offset") == "500":
            emulator.delete_organization(orgs[0])

    emulator.add_request_hook(delete_first_org_after_page_one)
    ids = [o["id"] for o in _records(client.iter_organization_pages())]

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
        _records(client.iter_organization_pages())

    # The hook runs before each page is served, so the crawl starts at 601 records and gives up before
    # offset 2 * 601 + 10 * 500: at most 13 pages, instead of chasing the growth forever. Pages fetched ahead
    # can make it notice a little earlier.
    offsets = [int(r.param("offset")) for r in _requests_to(emulator, "/organizations")]
    assert len(offsets) == len(set(offsets)) <= 13
    assert max(offsets) < 2 * 601 + 10 * 500


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
    _records(client.iter_organization_pages())
    _records(client.iter_user_pages())
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
            _records(client.iter_organization_pages())
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
        _records(client.iter_organization_pages())

    assert info.value.status == 422
    assert info.value.code == "form_param_value_invalid"
    assert info.value.trace_id
    assert len(emulator.requests) == 1
    assert sleeps == []


def test_404_on_a_listing_is_an_error(emulator: ClerkEmulator, client: ClerkClient) -> None:
    emulator.inject_fault("/users", 404)
    with pytest.raises(ClerkRequestError):
        _records(client.iter_user_pages())


# ---------------------------------------------------------------------- retries


def test_429_honours_retry_after(emulator: ClerkEmulator, client: ClerkClient, sleeps: list[float]) -> None:
    for i in range(600):
        emulator.create_organization(f"Org {i}")
    emulator.inject_fault("/organizations", 429, retry_after=7, query={"offset": "500"})

    assert len(_records(client.iter_organization_pages())) == 600
    assert sleeps == [7.0]
    assert client.limiter.throttled == 1  # and the process's limiter slowed down
    assert client.limiter.current_rate() < client.limiter.rate
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
        orgs = _records(client.iter_organization_pages())

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
        result = _records(client.iter_organization_pages())

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
        assert len(_records(c.iter_organization_pages())) == 3
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
        _records(client.iter_user_pages())
    assert "ConnectError" in str(info.value)
    assert emulator.secret_key not in str(info.value)
    assert len(sleeps) == 2


# ---------------------------------------------------------------------- concurrent paging and the rate limit


def _fast_client(emulator: ClerkEmulator, **options: Any) -> ClerkClient:
    """A client whose limiter never binds (the tests of the limiter set their own), with small pages."""
    options = {"rate_limit": 100_000, "page_size": 50, "max_in_flight": 8, **options}
    return ClerkClient(emulator.secret_key, emulator.api_url, timeout=10.0, retry=FAST_RETRY, **options)


def test_concurrent_listings_return_every_record_once_in_order(emulator: ClerkEmulator) -> None:
    emulator.seed_sample(organizations=2000, users=3000, memberships_per_org=3)
    in_flight, most_in_flight, lock = [0], [0], threading.Lock()

    def count_in_flight(method: str, path: str, query: dict[str, str]) -> None:
        with lock:
            in_flight[0] += 1
            most_in_flight[0] = max(most_in_flight[0], in_flight[0])
        time.sleep(0.01)  # long enough for the pages fetched ahead to overlap
        with lock:
            in_flight[0] -= 1

    emulator.add_request_hook(count_in_flight)
    with _fast_client(emulator) as client:
        orgs = _records(client.iter_organization_pages())
        users = _records(client.iter_user_pages())
        memberships = _records(client.iter_membership_pages())

    assert [o["id"] for o in orgs] == list(emulator.organizations)  # each once, oldest first
    assert [u["id"] for u in users] == list(emulator.users)
    assert [m["id"] for m in memberships] == list(emulator.memberships)
    assert len(memberships) == 6000
    for path, pages in (("/organizations", 40), ("/users", 61), ("/organization_memberships", 120)):
        offsets = sorted(int(r.param("offset")) for r in _requests_to(emulator, path))
        assert offsets == [50 * page for page in range(pages)], path  # every page once, none skipped
    assert most_in_flight[0] > 1


def test_pages_fetched_ahead_are_bounded(emulator: ClerkEmulator) -> None:
    """Memory holds at most ``max_in_flight`` pages fetched ahead, however long the listing."""
    for i in range(500):
        emulator.create_organization(f"Org {i}")

    with _fast_client(emulator, page_size=10, max_in_flight=4) as client:
        pages = client.iter_organization_pages()
        assert [o["name"] for o in next(pages)] == [f"Org {i}" for i in range(10)]
        assert len(next(pages)) == 10
        time.sleep(0.3)  # let anything the paginator wrongly queued reach the emulator
        assert len(_requests_to(emulator, "/organizations")) <= 1 + 4
        assert sum(len(page) for page in pages) == 480


def test_one_limiter_keeps_every_request_under_the_rate_limit() -> None:
    """Listings and point lookups from two clients share one limiter: set at the emulator's rate (20
    requests per 1 s window here, to keep the test short), not one request is refused. A client allowed
    far more meets 429s, waits out Retry-After, still gets everything, and slows its limiter."""
    with ClerkEmulator(rate_limit=20, rate_window_seconds=1.0) as emulator:
        emulator.seed_sample(organizations=300, users=40, memberships_per_org=2)
        user_ids = list(emulator.users)
        options: dict[str, Any] = {"rate_limit": 20, "rate_window_seconds": 1.0, "page_size": 10}
        with _fast_client(emulator, **options) as lister, _fast_client(emulator, **options) as looker:
            assert lister.limiter is looker.limiter
            with ThreadPoolExecutor(max_workers=1) as pool:
                listing = pool.submit(lambda: _records(lister.iter_organization_pages()))
                found = run_concurrently(looker.get_user, user_ids)
                orgs = listing.result()
        assert len(orgs) == 300 and all(found)
        assert len(emulator.requests) == 30 + 40
        assert [r for r in emulator.requests if r.status != 200] == []

        retry = RetryPolicy(max_attempts=8, base_delay=0.05, max_retry_after=2.0)
        with ClerkClient(
            emulator.secret_key, emulator.api_url, retry=retry, rate_limit=1000, rate_window_seconds=1.0,
            page_size=10,
        ) as greedy:  # fmt: skip
            assert len(_records(greedy.iter_organization_pages())) == 300
            assert greedy.limiter.throttled > 0
            assert greedy.limiter.current_rate() < greedy.limiter.rate
        assert any(r.status == 429 for r in emulator.requests)


def test_default_rate_limit_comes_from_the_key(emulator: ClerkEmulator) -> None:
    url = emulator.api_url
    with (
        ClerkClient("sk_live_abc", url) as live,
        ClerkClient("sk_test_abc", url) as test,
        ClerkClient("sk_live_abc", url, rate_limit=200) as configured,
        ClerkClient("sk_live_abc", url) as other_live,
    ):
        assert (live.limiter.limit, test.limiter.limit, configured.limiter.limit) == (1000, 100, 200)
        assert other_live.limiter is live.limiter  # one per instance and process
        assert test.limiter is not live.limiter
    assert default_rate_limit("sk_live_x") == 1000
    assert default_rate_limit("sk_test_x") == default_rate_limit("unknown") == 100


def test_the_limiter_spends_a_whole_window_at_once_then_waits_for_it_to_move() -> None:
    """Clerk counts requests per window, so a listing may send the first window's whole budget at once:
    the first ``limit`` requests wait for nothing; the next waits until the window has moved on."""
    limiter = RateLimiter(limit=5, window=0.5)
    waits = [limiter.acquire() for _ in range(6)]
    assert waits[:5] == [0.0] * 5
    assert waits[5] > 0
