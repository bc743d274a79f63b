"""One offset paginator for every Clerk listing, fetching pages concurrently once the listing's size is known.

A listing either answers ``{data, total_count}`` (organizations, memberships) or a bare array whose size comes
from a separate count (``GET /users`` and ``GET /users/count``). The paginator asks for the first page alone
when the size is unknown, then keeps up to ``max_in_flight`` further pages in flight on a thread pool and
yields them in offset order: memory holds at most that many pages, whatever the size of the listing.

Paging ends on the latest ``total_count`` (records created mid-crawl are picked up if they fit, deletions end
it early) or on a short page; pages already in flight are still yielded. Callers dedupe by id. A listing that
keeps growing far past the size it started with raises instead of being treated as complete.
"""

import logging
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from orgsync_pipeline.clerk.errors import ClerkError

Json = dict[str, Any]
T = TypeVar("T")
R = TypeVar("R")

# Each page in flight holds one parsed page (about 2 MB at 500 memberships). 16 would keep 100
# requests/s going at 150 ms a page, but a production key's first window allows 1,000 requests at
# once: 32 send them twice as fast (bench/bench_fetch.py: 1.36 -> 1.20 of the bound; 48 gained nothing).
DEFAULT_MAX_IN_FLIGHT = 32


class ListingError(ClerkError):
    """A listing that cannot be trusted as complete."""


@dataclass(frozen=True)
class Listing:
    """One offset-paged ``GET`` endpoint of Clerk's Backend API."""

    entity: str  # the name in progress logs and errors
    path: str  # relative to the API URL
    params: Mapping[str, str] = field(default_factory=dict)
    enveloped: bool = True  # ``{data, total_count}``; False: a bare array, sized by ``count``
    missing_ok: bool = False  # a 404 means "no such parent": the paginator then sets ``missing``
    log_progress: bool = True


@dataclass(frozen=True)
class Page:
    """One fetched page: its records, and the listing's total when the answer carries one."""

    records: list[Json]
    total: int | None


PageFetcher = Callable[[Listing, int, int], Page | None]  # (listing, offset, limit) -> page; None on 404


class OffsetPaginator:
    """Iterates one listing's pages in order (``pages``), fetching ahead concurrently on ``executor``."""

    def __init__(
        self,
        listing: Listing,
        fetch: PageFetcher,
        *,
        page_size: int,
        executor: Executor,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        count: int | None = None,
        log: logging.Logger | logging.LoggerAdapter[logging.Logger] | None = None,
    ) -> None:
        """``count``: the listing's size when known before the first page (required for bare arrays)."""
        if not listing.enveloped and count is None:
            raise ValueError(f"{listing.entity}: a bare-array listing needs its count")
        self.listing = listing
        self.page_size = page_size
        self.missing = False  # set when a ``missing_ok`` listing answered 404
        self._fetch = fetch
        self._executor = executor
        self._max_in_flight = max(1, max_in_flight)
        self._count = count
        self._log = log or logging.getLogger(__name__)

    def pages(self) -> Iterator[list[Json]]:
        """Every non-empty page, in offset order; raises if any page fails (no page is ever skipped)."""
        pending: deque[tuple[int, Future[Page | None]]] = deque()
        # Offsets below ``end`` are worth fetching; with no count yet, only the first page is.
        end = self._count if self._count is not None else 1
        first_total = self._count
        next_offset = 0
        ended = False
        seen_pages = seen_records = 0
        try:
            while True:
                while not ended and len(pending) < self._max_in_flight and next_offset < max(end, 1):
                    self._check_runaway(next_offset, first_total)
                    pending.append((next_offset, self._executor.submit(self._fetch_page, next_offset)))
                    next_offset += self.page_size
                if not pending:
                    return
                offset, future = pending.popleft()
                page = future.result()
                if page is None:
                    self.missing = True
                    return
                if first_total is None:
                    first_total = page.total or 0
                seen_pages += 1
                seen_records += len(page.records)
                self._progress(seen_pages, max(page.total or first_total, seen_records), seen_records)
                if page.records:
                    yield page.records
                if len(page.records) < self.page_size:
                    ended = True  # nothing after this page; pages already in flight are still yielded
                elif page.total is not None:
                    end = page.total
                else:  # a bare array: a full page means there may be one more, whatever the count said
                    end = max(end, offset + self.page_size + 1)
        finally:
            for _, future in pending:
                future.cancel()

    def _fetch_page(self, offset: int) -> Page | None:
        return self._fetch(self.listing, offset, self.page_size)

    def _check_runaway(self, offset: int, first_total: int | None) -> None:
        """Raise once a crawl goes far past the size it started with (a listing that keeps growing, or a
        count that was wrong): such a listing is not known to be complete, so it must not be used as one."""
        if first_total is None or offset < 2 * first_total + 10 * self.page_size:
            return
        raise ListingError(
            f"{self.listing.entity}: the listing did not end (it started at {first_total} records and is "
            f"past offset {offset}); refusing to treat it as complete"
        )

    def _progress(self, page: int, total: int, records: int) -> None:
        if self.listing.log_progress:
            pages = max(page, math.ceil(total / self.page_size))
            self._log.info("%s: page %d/%d (%d/%d records)", self.listing.entity, page, pages, records, total)


def map_bounded(
    executor: Executor, fn: Callable[[T], R], items: Iterable[T], max_in_flight: int
) -> Iterator[R]:
    """``fn`` over ``items`` on ``executor``, results in input order, at most ``max_in_flight`` pending:
    unlike ``Executor.map`` it never queues a task per item up front."""
    pending: deque[Future[R]] = deque()
    try:
        for item in items:
            if len(pending) >= max(1, max_in_flight):
                yield pending.popleft().result()
            pending.append(executor.submit(fn, item))
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def run_concurrently(
    fn: Callable[[T], R], items: Iterable[T], *, max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
) -> list[R]:
    """``[fn(item) for item in items]`` on a short-lived thread pool, in order. For Clerk point lookups: the
    process's rate limiter, not this pool, decides how fast they go."""
    with ThreadPoolExecutor(max_workers=max(1, max_in_flight), thread_name_prefix="clerk-lookup") as pool:
        return list(map_bounded(pool, fn, items, max_in_flight))
