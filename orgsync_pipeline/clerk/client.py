"""Clerk Backend API client: complete listings (offset paging, limit 500), point lookups, retries, and the
process-wide rate limit.

Listings are generators of pages that either cover the whole listing or raise; a failed page is never
skipped. Once a listing's size is known, its remaining pages are fetched concurrently (``paging``), in order,
with a bounded number in flight. Every request first takes a slot from the process's limiter for the instance
(``ratelimit``): by default 1,000 requests per 10 s for ``sk_live_`` keys and 100 for others. 429 answers
honour ``Retry-After`` and slow that limiter; 5xx answers and transport errors (refused connections, timeouts)
are retried with exponential backoff and full jitter until the retry budget is spent. The secret key goes
into the ``Authorization`` header only: never into logs, exceptions or reprs.
"""

import logging
import random
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

from orgsync_pipeline.clerk.errors import (
    ClerkAuthError,
    ClerkError,
    ClerkRequestError,
    ClerkUnavailableError,
)
from orgsync_pipeline.clerk.paging import DEFAULT_MAX_IN_FLIGHT, Listing, OffsetPaginator, Page
from orgsync_pipeline.clerk.ratelimit import (
    RATE_WINDOW_SECONDS,
    RateLimiter,
    default_rate_limit,
    shared_limiter,
)

__all__ = [
    "CLERK_API_VERSION",
    "DEFAULT_API_URL",
    "PAGE_SIZE",
    "ClerkAuthError",
    "ClerkClient",
    "ClerkError",
    "ClerkRequestError",
    "ClerkUnavailableError",
    "RetryPolicy",
]

DEFAULT_API_URL = "https://api.clerk.com/v1"
CLERK_API_VERSION = "2025-11-10"
PAGE_SIZE = 500  # Clerk's maximum ``limit``
USER_AGENT = "orgsync/0.1"

Json = dict[str, Any]


@dataclass(frozen=True)
class RetryPolicy:
    """How long to keep trying: at most ``max_attempts`` requests within ``max_elapsed`` seconds (sleeps
    included); backoff ``uniform(0, min(max_delay, base_delay * 2**n))``; ``Retry-After`` capped at
    ``max_retry_after``."""

    max_attempts: int = 8
    base_delay: float = 0.5
    max_delay: float = 30.0
    max_elapsed: float = 300.0
    max_retry_after: float = 120.0

    def backoff(self, retry_number: int) -> float:
        """Full-jitter delay before retry ``retry_number`` (0-based)."""
        return random.uniform(0, min(self.max_delay, self.base_delay * 2**retry_number))


@dataclass(frozen=True)
class _Success:
    """A usable answer: the parsed body (None for an allowed 404)."""

    value: Any


@dataclass(frozen=True)
class _Failure:
    """A retryable failure: what went wrong, and the server's requested wait, if any."""

    cause: str
    retry_after: float | None = None
    throttled: bool = False  # a 429


class ClerkClient:
    """Synchronous Clerk Backend API client over one pooled ``httpx.Client``."""

    def __init__(
        self,
        secret_key: str,
        api_url: str = DEFAULT_API_URL,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy = RetryPolicy(),
        logger: logging.Logger | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rate_limit: int | None = None,
        page_size: int = PAGE_SIZE,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        rate_window_seconds: float = RATE_WINDOW_SECONDS,
    ) -> None:
        """``rate_limit``: requests per 10 s for the whole process (None: Clerk's limit for the key's kind of
        instance); ``max_in_flight``: pages fetched ahead per listing (1: one page after another);
        ``page_size``: records per page (Clerk's maximum, 500, unless a test needs many small pages);
        ``rate_window_seconds``: the window ``rate_limit`` counts over (Clerk's is 10 s; tests shorten it)."""
        if not secret_key:
            raise ValueError("a Clerk secret key is required")
        if not 1 <= page_size <= PAGE_SIZE:
            raise ValueError(f"page_size must be between 1 and {PAGE_SIZE}, got {page_size}")
        self.api_url = api_url.rstrip("/")
        self.retry = retry
        self.page_size = page_size
        self.max_in_flight = max(1, max_in_flight)
        limit = rate_limit if rate_limit is not None else default_rate_limit(secret_key)
        self.limiter: RateLimiter = shared_limiter(self.api_url, secret_key, limit, rate_window_seconds)
        self._log = logger or logging.getLogger(__name__)
        self._sleep = sleep
        self._secret_key = secret_key
        self._http = httpx.Client(
            base_url=self.api_url + "/",
            timeout=timeout,
            limits=httpx.Limits(max_connections=self.max_in_flight + 8),
            headers={
                "Authorization": f"Bearer {secret_key}",
                "Clerk-API-Version": CLERK_API_VERSION,
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
            },
        )
        self._pool = ThreadPoolExecutor(max_workers=self.max_in_flight, thread_name_prefix="clerk-page")

    def __repr__(self) -> str:
        return f"ClerkClient(api_url={self.api_url!r})"

    def close(self) -> None:
        """Stop fetching ahead and close the connection pool."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._http.close()

    def __enter__(self) -> "ClerkClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ listings

    def iter_organization_pages(self) -> Iterator[list[Json]]:
        """All organizations, oldest first, one page (≤500) at a time; raises if any page fails."""
        return self._pages(Listing("organizations", "organizations", {"order_by": "+created_at"}))

    def iter_membership_pages(self) -> Iterator[list[Json]]:
        """All memberships of the instance (``GET /organization_memberships``, never per organization),
        oldest first; raises if any page fails."""
        return self._pages(Listing("memberships", "organization_memberships", {"order_by": "+created_at"}))

    def iter_organization_membership_pages(self, org_id: str) -> Iterator[list[Json]]:
        """All memberships of one organization (``GET /organizations/{id}/memberships``), oldest first;
        raises if any page fails (``ClerkRequestError`` with status 404 once the organization is gone)."""
        path = f"organizations/{_segment(org_id)}/memberships"
        return self._pages(Listing("memberships", path, {"order_by": "+created_at"}))

    def iter_user_pages(self) -> Iterator[list[Json]]:
        """All users, oldest first. ``GET /users`` answers a bare array, so ``GET /users/count`` sizes the
        listing (when the first page is requested); paging still goes on while pages come back full."""
        listing = Listing("users", "users", {"order_by": "+created_at"}, enveloped=False)
        yield from self._paginator(listing, count=self.count_users()).pages()

    # ------------------------------------------------------------------ counts and point lookups

    def count_organizations(self) -> int:
        """Clerk's ``total_count`` of organizations."""
        return self._total_count("organizations")

    def count_memberships(self) -> int:
        """Clerk's ``total_count`` of memberships across the instance."""
        return self._total_count("organization_memberships")

    def count_users(self) -> int:
        """``GET /users/count``."""
        body = self._get("users/count", {})
        total = body.get("total_count") if isinstance(body, dict) else None
        if not isinstance(total, int):
            raise self._malformed("users/count", "a total_count")
        return total

    def get_organization(self, org_id: str) -> Json | None:
        """One organization by id (or slug); None when Clerk answers 404."""
        found: Json | None = self._get(f"organizations/{_segment(org_id)}", {}, allow_404=True)
        return found

    def get_user(self, user_id: str) -> Json | None:
        """One user by id; None when Clerk answers 404."""
        found: Json | None = self._get(f"users/{_segment(user_id)}", {}, allow_404=True)
        return found

    def list_user_memberships(self, user_id: str) -> list[Json] | None:
        """All memberships of one user (every page); None when the user is 404."""
        path = f"users/{_segment(user_id)}/organization_memberships"
        paginator = self._paginator(Listing("memberships", path, missing_ok=True, log_progress=False))
        memberships = [membership for page in paginator.pages() for membership in page]
        return None if paginator.missing else memberships

    # ------------------------------------------------------------------ paging

    def _pages(self, listing: Listing) -> Iterator[list[Json]]:
        # A generator, so that nothing is requested before the caller asks for the first page.
        yield from self._paginator(listing).pages()

    def _paginator(self, listing: Listing, *, count: int | None = None) -> OffsetPaginator:
        return OffsetPaginator(
            listing,
            self._fetch_page,
            page_size=self.page_size,
            executor=self._pool,
            max_in_flight=self.max_in_flight,
            count=count,
            log=self._log,
        )

    def _fetch_page(self, listing: Listing, offset: int, limit: int) -> Page | None:
        params = {**listing.params, "limit": limit, "offset": offset}
        body = self._get(listing.path, params, allow_404=listing.missing_ok)
        if body is None:
            return None
        if listing.enveloped:
            data, total = self._envelope(listing.path, body)
            return Page(data, total)
        if not isinstance(body, list):
            raise self._malformed(listing.path, "a JSON array")
        return Page(body, None)

    def _total_count(self, path: str) -> int:
        _, total = self._envelope(path, self._get(path, {"limit": 1, "offset": 0}))
        return total

    def _envelope(self, path: str, body: Any) -> tuple[list[Json], int]:
        if not isinstance(body, dict):
            raise self._malformed(path, "an object with data and total_count")
        data, total = body.get("data"), body.get("total_count")
        if not isinstance(data, list) or not isinstance(total, int):
            raise self._malformed(path, "an object with data and total_count")
        return data, total

    def _malformed(self, path: str, expected: str) -> ClerkRequestError:
        return ClerkRequestError(f"Clerk answered GET /{path} without {expected}", status=200)

    # ------------------------------------------------------------------ requests and retries

    def _get(self, path: str, params: dict[str, Any], *, allow_404: bool = False) -> Any:
        """GET ``path`` (relative to the API URL) with retries; None on 404 when ``allow_404``."""
        policy = self.retry
        started = time.monotonic()
        slept = 0.0  # requested sleep time, so max_elapsed holds even with an injected no-op sleep
        sleep_wall = 0.0  # wall time actually spent in sleep() or queued for the rate limit
        attempt = 0
        throttled = False
        while True:
            attempt += 1
            # Waiting for the limiter is queueing, not Clerk failing: it does not spend the retry budget.
            sleep_wall += self.limiter.acquire(after_retry_wait=throttled)
            outcome = self._attempt(path, params, allow_404)
            if isinstance(outcome, _Success):
                return outcome.value
            failure = outcome
            elapsed = time.monotonic() - started - sleep_wall + slept
            if failure.retry_after is not None:
                delay = min(failure.retry_after, policy.max_retry_after)
            else:
                delay = policy.backoff(attempt - 1)
            if attempt >= policy.max_attempts or elapsed + delay > policy.max_elapsed:
                raise ClerkUnavailableError(
                    f"Clerk is unavailable: GET /{path} failed {attempt} times over {elapsed:.1f}s; "
                    f"last cause: {failure.cause}",
                    attempts=attempt,
                    elapsed=elapsed,
                    last_cause=failure.cause,
                )
            self._log.warning(
                "Clerk GET /%s failed (%s); attempt %d/%d, retrying in %.2fs",
                path, failure.cause, attempt, policy.max_attempts, delay,
            )  # fmt: skip
            throttled = failure.throttled
            if throttled:
                self.limiter.penalize(delay)  # hold and slow every other request of the process too
            before = time.monotonic()
            self._sleep(delay)
            sleep_wall += time.monotonic() - before
            slept += delay

    def _attempt(self, path: str, params: dict[str, Any], allow_404: bool) -> _Success | _Failure:
        try:
            response = self._http.get(path, params=params)
        except httpx.TransportError as exc:
            return _Failure(self._redact(f"{type(exc).__name__}: {exc}".rstrip(": ")))
        status = response.status_code
        if status < 300:
            try:
                return _Success(response.json())
            except ValueError:
                return _Failure(f"HTTP {status} with a body that is not JSON")
        if status == 404 and allow_404:
            return _Success(None)
        code, message, long_message, trace_id = self._error_details(response)
        if status in (401, 403):
            raise ClerkAuthError(
                f"Clerk refused the secret key (HTTP {status} {code or 'no error code'}): "
                f"{long_message or message or response.reason_phrase}",
                status=status,
                code=code,
            )
        if status == 429:
            return _Failure(f"HTTP 429 {code or ''}".strip(), _retry_after(response), throttled=True)
        if status >= 500:
            return _Failure(f"HTTP {status} {code or ''}".strip())
        raise ClerkRequestError(
            f"Clerk rejected GET /{path} (HTTP {status} {code or 'no error code'}): "
            f"{long_message or message or response.reason_phrase} (trace {trace_id or 'n/a'})",
            status=status,
            code=code,
            long_message=long_message,
            trace_id=trace_id,
        )

    def _error_details(
        self, response: httpx.Response
    ) -> tuple[str | None, str | None, str | None, str | None]:
        """(code, message, long_message, clerk_trace_id) from a ClerkErrors body, all redacted."""
        try:
            body = response.json()
        except ValueError:
            body = None
        error: dict[str, Any] = {}
        trace_id = response.headers.get("cf-ray")
        if isinstance(body, dict):
            errors = body.get("errors")
            if isinstance(errors, list) and errors and isinstance(errors[0], dict):
                error = errors[0]
            trace_id = body.get("clerk_trace_id") or trace_id

        def text(value: Any) -> str | None:
            return self._redact(str(value)) if value is not None else None

        return (
            text(error.get("code")),
            text(error.get("message")),
            text(error.get("long_message")),
            text(trace_id),
        )

    def _redact(self, text: str) -> str:
        return text.replace(self._secret_key, "[redacted]")


def _retry_after(response: httpx.Response) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or HTTP date), or None."""
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def _segment(value: str) -> str:
    if not value:
        raise ValueError("an id is required")
    return quote(value, safe="")
