"""The receiver commits concurrent deliveries together: each still gets its own answer and inbox row,
once, and one event Postgres cannot store never costs the others theirs."""

import asyncio
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from orgsync_pipeline.receiver_inbox import InboxDatabase, InboxWriter
from orgsync_pipeline.settings import load_settings
from orgsync_pipeline.store.inbox import NewEvent, StoredEvent
from orgsync_pipeline.store.schema import webhook_inbox


def event(kind: str = "user.created", **data: Any) -> dict[str, Any]:
    return {
        "object": "event",
        "type": kind,
        "timestamp": 1_700_000_000_000,
        "data": {"object": "user", **data},
    }


@pytest.fixture
def database(database_url: str, tmp_path: Path) -> InboxDatabase:
    return InboxDatabase(load_settings({"DATABASE_URL": database_url, "ORGSYNC_HOME": str(tmp_path)}))


def stored_rows(engine: Engine) -> dict[str, tuple[int, str, str]]:
    """svix-id -> (inbox id, status, the transaction that wrote it)."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                webhook_inbox.c.svix_id,
                webhook_inbox.c.id,
                webhook_inbox.c.status,
                sa.literal_column("xmin::text"),
            )
        ).all()
    return {svix_id: (inbox_id, status, xmin) for svix_id, inbox_id, status, xmin in rows}


def test_one_batch_stores_each_event_once_with_its_own_status(
    database: InboxDatabase, engine: Engine
) -> None:
    events = [
        NewEvent("msg_a", event(id="user_a"), handled=True),
        NewEvent("msg_b", event("email.created", id="email_b"), handled=False),
        NewEvent("msg_a", event(id="user_a"), handled=True),  # the same delivery twice in one batch
    ]
    first = database.store(events)
    again = database.store(events[:1])  # a redelivery later

    rows = stored_rows(engine)
    assert set(rows) == {"msg_a", "msg_b"}
    assert rows["msg_a"][1] == "pending" and rows["msg_b"][1] == "ignored"
    assert first == [
        StoredEvent(rows["msg_a"][0], duplicate=False),
        StoredEvent(rows["msg_b"][0], duplicate=False),
        StoredEvent(rows["msg_a"][0], duplicate=True),
    ]
    assert again == [StoredEvent(rows["msg_a"][0], duplicate=True)]


def test_an_event_postgres_cannot_store_costs_the_others_nothing(
    database: InboxDatabase, engine: Engine
) -> None:
    results = database.store(
        [
            NewEvent("msg_before", event(id="user_1"), handled=True),
            NewEvent("msg_nul", event(id="user_2", first_name="a\x00b"), handled=True),  # jsonb has no \u0000
            NewEvent("msg_after", event(id="user_3"), handled=True),
        ]
    )

    assert isinstance(results[1], sa.exc.DataError)
    assert set(stored_rows(engine)) == {"msg_before", "msg_after"}
    assert [result.duplicate for result in (results[0], results[2])] == [False, False]  # type: ignore[union-attr]


def test_concurrent_requests_share_transactions_and_each_gets_its_row(
    database: InboxDatabase, engine: Engine
) -> None:
    writer = InboxWriter(database)

    async def deliver_all() -> list[StoredEvent]:
        async with writer.running():
            return await asyncio.gather(
                *(writer.store(f"msg_{i}", event(id=f"user_{i}")) for i in range(200))
            )

    results = asyncio.run(deliver_all())

    rows = stored_rows(engine)
    assert {f"msg_{i}": result.inbox_id for i, result in enumerate(results)} == {
        svix_id: inbox_id for svix_id, (inbox_id, _status, _xmin) in rows.items()
    }
    assert not any(result.duplicate for result in results)
    assert len({xmin for _id, _status, xmin in rows.values()}) < len(rows) / 10  # batches, not one per event


def test_without_its_lifespan_the_writer_stores_one_event_at_a_time(
    database: InboxDatabase, engine: Engine
) -> None:
    writer = InboxWriter(database)
    result = asyncio.run(writer.store("msg_alone", event(id="user_alone")))

    assert stored_rows(engine)["msg_alone"][0] == result.inbox_id
