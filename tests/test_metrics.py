"""GET /metrics over real HTTP: events by type and outcome, latency, inbox depth, apply lag, DB errors."""

import dataclasses
import socket
from collections.abc import Iterator

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.engine import Engine

from orgsync_pipeline.settings import Secret, load_settings
from orgsync_pipeline.store.schema import webhook_inbox
from orgsync_pipeline.webhooks import create_app, serve_in_thread
from tests.support import Receiver


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    answer = httpx.get(f"{url}/metrics", timeout=30)
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
    }


@pytest.fixture
def sensor_receiver(database_url: str, webhook_secret: str) -> Iterator[Receiver]:
    """The receiver leaving events to the sensor, so the inbox holds what the test sent."""
    settings = dataclasses.replace(load_settings(), webhook_apply="sensor")
    with serve_in_thread(create_app(settings)) as url:
        yield Receiver(url, webhook_secret)


def user_event(user_id: str) -> dict:
    return {
        "type": "user.created",
        "object": "event",
        "timestamp": 1_700_000_000_000,
        "data": {"id": user_id},
    }


def test_events_latency_and_inbox(sensor_receiver: Receiver, engine: Engine) -> None:
    assert sensor_receiver.post(user_event("user_1"), msg_id="msg_1").status_code == 200
    assert sensor_receiver.post(user_event("user_1"), msg_id="msg_1").json()["status"] == "duplicate"
    assert sensor_receiver.post({"type": "email.created", "data": {}}).json()["status"] == "ignored"
    unsigned = httpx.post(f"{sensor_receiver.url}/webhooks/clerk", content=b"{}", timeout=30)
    assert unsigned.status_code == 400
    with engine.begin() as conn:  # one applied event, 4 s after receipt
        conn.execute(
            sa.update(webhook_inbox)
            .where(webhook_inbox.c.svix_id == "msg_1")
            .values(
                status="applied", applied_at=webhook_inbox.c.received_at + sa.text("interval '4 seconds'")
            )
        )
        pending = conn.execute(
            sa.select(sa.func.count()).where(webhook_inbox.c.status == "pending")
        ).scalar_one()

    samples = scrape(sensor_receiver.url)

    def events(kind: str, outcome: str) -> float:
        return samples.get(("orgsync_webhook_events_total", (("outcome", outcome), ("type", kind))), 0)

    assert events("user.created", "stored") == 1
    assert events("user.created", "duplicate") == 1
    assert events("other", "ignored") == 1
    assert events("unverified", "rejected") == 1
    route = (("method", "POST"), ("route", "/webhooks/clerk"), ("status", "200"))
    assert samples[("orgsync_http_request_duration_seconds_count", route)] == 3
    assert (
        "orgsync_http_request_duration_seconds_bucket",
        tuple(sorted((*route, ("le", "+Inf")))),
    ) in samples
    assert samples[("orgsync_webhook_inbox_events", (("status", "pending"),))] == pending
    assert samples[("orgsync_webhook_inbox_events", (("status", "applied"),))] == 1
    assert samples[("orgsync_webhook_apply_lag_seconds", (("quantile", "1"),))] == pytest.approx(4)
    assert samples[("orgsync_webhook_applied_last_hour", ())] == 1


def test_database_errors_are_counted(webhook_secret: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = dataclasses.replace(
        load_settings(),
        webhook_apply="sensor",
        database_url=Secret(f"postgresql://orgsync:pw-never-shown@127.0.0.1:{port}/app"),
    )
    with serve_in_thread(create_app(settings)) as url:
        receiver = Receiver(url, webhook_secret)
        assert receiver.post(user_event("user_2")).status_code == 503
        assert httpx.get(f"{url}/healthz", timeout=30).status_code == 503
        answer = httpx.get(f"{url}/metrics", timeout=30)
        samples = scrape(url)

    assert "pw-never-shown" not in answer.text
    assert (
        samples[("orgsync_webhook_events_total", (("outcome", "unavailable"), ("type", "unverified")))] == 1
    )
    for operation in ("store", "healthz", "metrics"):
        assert samples[("orgsync_database_errors_total", (("operation", operation),))] >= 1
