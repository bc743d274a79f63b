"""Clerk Backend API client: complete listings (offset paging, limit 500), point lookups, retries.

Listings are generators of pages that either cover the whole listing or raise; a failed page is never
skipped. 429 answers honour ``Retry-After``; 5xx answers and transport errors (refused connections, timeouts)
are retried with exponential backoff and full jitter until the retry budget is spent. The secret key goes
into the ``Authorization`` header only: never into logs, exceptions or reprs.
"""

import logging
import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote

import httpx

DEFAULT_API_URL = "https://api.clerk.com/v1"
CLERK_API_VERSION = "2025-11-10"
PAGE_SIZE = 500
USER_AGENT = "orgsync/0.1"

Json = dict[str, Any]


class ClerkError(Exception):
    """Base class for every error raised by the Clerk client."""


class ClerkAuthError(ClerkError):
    """Clerk refused the secret key (HTTP 401/403)."""

    def __init__(self, message: str, *, status: int, code: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class ClerkRequestError(ClerkError):
    """Clerk rejected the request (a 4xx other than 401/403/429, or a malformed answer)."""

    def __init__(
        self,
        message: str,
        *,
        status: int,
        code: str | None = None,
        long_message: str | None = None,
        trace_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.long_message = long_message
        self.trace_id = trace_id


class ClerkUnavailableError(ClerkError):
    """Clerk kept failing (5xx, 429, connection errors, timeouts) until the retry budget was spent."""

    def __init__(self, message: str, *, attempts: int, elapsed: float, last_cause: str) -> None:
        super().__init__(message)
        self.attempts = attempts
        self.elapsed = elapsed
        self.last_cause = last_cause


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
    ) -> None:
        if not secret_key:
            raise ValueError("a Clerk secret key is required")
        self.api_url = api_url.rstrip("/")
        self.retry = retry
        self._log = logger or logging.getLogger(__name__)
        self._sleep = sleep
        self._secret_key = secret_key
        self._http = httpx.Client(
            base_url=self.api_url + "/",
            timeout=timeout,
            headers={
                "Authorization": f"Bearer {secret_key}",
                "Clerk-API-Version": CLERK_API_VERSION,
                "User-Agent": USER_AGENT,
                "Accept": "application/json",
            },
        )

    def __repr__(self) -> str:
        return f"ClerkClient(api_url={self.api_url!r})"

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> "ClerkClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ listings

    def iter_organization_pages(self) -> Iterator[list[Json]]:
        """All organizations, oldest first, one page (≤500) at a time; raises if any page fails."""
        return self._iter_enveloped_pages("organizations", "organizations", {"order_by": "+created_at"})

    def iter_membership_pages(self) -> Iterator[list[Json]]:
        """All memberships of the instance (``GET /organization_memberships``, never per organization),
        oldest first; raises if any page fails."""
        return self._iter_enveloped_pages(
            "memberships", "organization_memberships", {"order_by": "+created_at"}
        )

    def iter_user_pages(self) -> Iterator[list[Json]]:
        """All users, oldest first; ``GET /users`` answers a bare array, so paging stops on a short page and
        ``/users/count`` only feeds the progress log. Raises if any page fails."""
        total = self.count_users()
        offset = 0
        pages = 0
        records = 0
        while True:
            page = self._get("users", {"limit": PAGE_SIZE, "offset": offset, "order_by": "+created_at"})
            if not isinstance(page, list):
                raise self._malformed("users", "a JSON array")
            pages += 1
            records += len(page)
            self._log_progress("users", pages, max(total, records), records)
            if page:
                yield page
            if len(page) < PAGE_SIZE or self._runaway("users", offset + PAGE_SIZE, total):
                return
            offset += PAGE_SIZE

    def list_organizations(self) -> list[Json]:
        """All organizations (see ``iter_organization_pages``)."""
        return [org for page in self.iter_organization_pages() for org in page]

    def list_memberships(self) -> list[Json]:
        """All memberships (see ``iter_membership_pages``)."""
        return [mem for page in self.iter_membership_pages() for mem in page]

    def list_users(self) -> list[Json]:
        """All users (see ``iter_user_pages``)."""
        return [user for page in self.iter_user_pages() for user in page]

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
        return self._get(f"organizations/{_segment(org_id)}", {}, allow_404=True)

    def get_user(self, user_id: str) -> Json | None:
        """One user by id; None when Clerk answers 404."""
        return self._get(f"users/{_segment(user_id)}", {}, allow_404=True)

    def list_user_memberships(self, user_id: str) -> list[Json] | None:
        """All memberships of one user (every page); None when the user is 404."""
        path = f"users/{_segment(user_id)}/organization_memberships"
        memberships: list[Json] = []
        offset = 0
        while True:
            body = self._get(path, {"limit": PAGE_SIZE, "offset": offset}, allow_404=True)
            if body is None:
                return None
            data, total = self._envelope(path, body)
            memberships.extend(data)
            offset += PAGE_SIZE
            if len(data) < PAGE_SIZE or offset >= total:
                return memberships

    # ------------------------------------------------------------------ paging

    def _iter_enveloped_pages(self, entity: str, path: str, params: dict[str, str]) -> Iterator[list[Json]]:
        offset = 0
        pages = 0
        records = 0
        first_total: int | None = None
        while True:
            body = self._get(path, {**params, "limit": PAGE_SIZE, "offset": offset})
            data, total = self._envelope(path, body)
            if first_total is None:
                first_total = total
            pages += 1
            records += len(data)
            self._log_progress(entity, pages, max(total, records), records)
            if data:
                yield data
            offset += PAGE_SIZE
            # Stop on the latest total: records created mid-crawl are picked up if they fit, deletions that
            # shrink the listing end it early. Callers dedupe by id.
            if len(data) < PAGE_SIZE or offset >= total or self._runaway(entity, offset, first_total):
                return

    def _runaway(self, entity: str, offset: int, first_total: int) -> bool:
        """Raise once a crawl has gone far past the size it started with (a listing that keeps growing, or
        a count that was wrong): such a listing is not known to be complete, so it must not be used as one."""
        limit = 2 * first_total + 10 * PAGE_SIZE
        if offset < limit:
            return False
        raise ClerkError(
            f"{entity}: the listing did not end (it started at {first_total} records and is past offset "
            f"{offset}); refusing to treat it as complete"
        )

    def _log_progress(self, entity: str, page: int, total: int, records: int) -> None:
        pages = max(page, math.ceil(total / PAGE_SIZE))
        self._log.info("%s: page %d/%d (%d/%d records)", entity, page, pages, records, total)

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
        sleep_wall = 0.0  # wall time actually spent in sleep()
        attempt = 0
        while True:
            attempt += 1
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
            return _Failure(f"HTTP 429 {code or ''}".strip(), _retry_after(response))
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
