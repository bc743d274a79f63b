"""The receiver's way into the inbox: its database, and the writer that commits events in batches.

Each verified delivery waits for the transaction that holds its event, so a 2xx still means
committed. Deliveries that arrive while a batch is being written go together into the next one
(nothing waits to fill a batch): one statement and one commit for many events instead of one each,
which is what lets one worker store more events per second than one ``INSERT`` per event can
(bench/bench_receiver.py).
"""

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import anyio
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from orgsync_pipeline.event_types import is_handled
from orgsync_pipeline.settings import Settings
from orgsync_pipeline.store import inbox
from orgsync_pipeline.store.database import configured_database_url, migrated_engine_for

# Batches written at once per process: one fills while the other commits.
CONCURRENT_BATCHES = 2
MAX_BATCH_EVENTS = 100


class InboxDatabase:
    """The inbox's database, connected (and migrated) on first use, so the receiver starts and
    answers 503 while the database is down instead of refusing to start."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    def engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                # No ping per checkout: it cost a fifth of the receiver's throughput
                # (bench/bench_receiver.py: 607 -> 756 events/s); store() retries a dead one instead.
                self._engine = migrated_engine_for(
                    configured_database_url(self._settings),
                    auto_migrate=self._settings.auto_migrate,
                    pre_ping=False,
                )
            return self._engine

    def store(self, events: Sequence[inbox.NewEvent]) -> list[inbox.StoredEvent | sa.exc.DataError]:
        """Commit ``events`` to the inbox in one transaction; one result per event. Should Postgres
        refuse one event's values (a ``DataError``), the others are stored one by one and that
        event's result is the error, so one bad event never costs the others their 2xx."""
        try:
            return list(self._store_retrying(events))  # a list of the wider type
        except sa.exc.DataError:
            if len(events) == 1:
                raise
        results: list[inbox.StoredEvent | sa.exc.DataError] = []
        for event in events:
            try:
                results.extend(self._store_retrying([event]))
            except sa.exc.DataError as exc:
                results.append(exc)
        return results

    def _store_retrying(self, events: Sequence[inbox.NewEvent]) -> list[inbox.StoredEvent]:
        """Store once more on a fresh connection if the pooled one was dead: after a database restart
        SQLAlchemy discards the whole pool on the first failure, and the store is idempotent by
        svix-id, so the retry cannot store an event twice."""
        try:
            return self._store_once(events)
        except sa.exc.DBAPIError as exc:
            if not exc.connection_invalidated:
                raise
            return self._store_once(events)

    def _store_once(self, events: Sequence[inbox.NewEvent]) -> list[inbox.StoredEvent]:
        with self.engine().begin() as conn:
            return inbox.store_events(conn, events)

    def ping(self) -> None:
        with self.engine().connect() as conn:
            conn.execute(sa.select(1))


@dataclass
class _Delivery:
    event: inbox.NewEvent
    answer: "asyncio.Future[inbox.StoredEvent]" = field(repr=False)


class InboxWriter:
    """Commits the events of concurrent requests together (see the module's docstring)."""

    def __init__(self, database: InboxDatabase) -> None:
        self._database = database
        self._queue: asyncio.Queue[_Delivery] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def store(self, svix_id: str, payload: dict[str, Any]) -> inbox.StoredEvent:
        """Commit one event; returns once the transaction holding it has committed."""
        event = inbox.NewEvent(svix_id, payload, handled=is_handled(payload["type"]))
        loop = asyncio.get_running_loop()
        if self._queue is None or self._loop is not loop:
            # Not started in this event loop (an app run without its lifespan): one event at a time.
            stored = await anyio.to_thread.run_sync(self._database.store, [event], abandon_on_cancel=True)
            return _result(stored[0])
        delivery = _Delivery(event, loop.create_future())
        self._queue.put_nowait(delivery)
        return await delivery.answer

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Write batches while the app runs (its lifespan)."""
        self._queue, self._loop = asyncio.Queue(), asyncio.get_running_loop()
        tasks = [asyncio.create_task(self._write_batches(self._queue)) for _ in range(CONCURRENT_BATCHES)]
        try:
            yield
        finally:
            self._queue = self._loop = None
            for task in tasks:
                task.cancel()

    async def _write_batches(self, queue: "asyncio.Queue[_Delivery]") -> None:
        while True:
            batch = [await queue.get()]
            while len(batch) < MAX_BATCH_EVENTS and not queue.empty():
                batch.append(queue.get_nowait())
            # A request that gave up (and answered 503) is not stored: Svix sends it again.
            batch = [delivery for delivery in batch if not delivery.answer.done()]
            if batch:
                await self._write(batch)

    async def _write(self, batch: list[_Delivery]) -> None:
        results: Sequence[inbox.StoredEvent | Exception]
        try:
            results = await anyio.to_thread.run_sync(
                self._database.store, [delivery.event for delivery in batch]
            )
        except Exception as exc:  # each waiting request answers for it (a 503)
            results = [exc] * len(batch)
        for delivery, result in zip(batch, results, strict=True):
            if delivery.answer.done():
                continue
            if isinstance(result, Exception):
                delivery.answer.set_exception(result)
            else:
                delivery.answer.set_result(result)


def _result(result: inbox.StoredEvent | sa.exc.DataError) -> inbox.StoredEvent:
    if isinstance(result, sa.exc.DataError):
        raise result
    return result
