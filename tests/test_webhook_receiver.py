"""The Clerk webhook receiver over real loopback HTTP: Svix signatures, the inbox, database outages.

Each test serves ``create_app(load_settings({...}))`` with uvicorn in a thread and posts to it with
httpx, signing as Svix does; assertions are on what the ``webhook_inbox`` table holds. The outage
tests put a TCP proxy (``tests/tcp_proxy.py``) between the receiver and PostgreSQL and switch it off.
"""

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from orgsync_pipeline.clerk.emulator import svix_headers as emulator_svix_headers
from orgsync_pipeline.settings import SettingsError, load_settings
from orgsync_pipeline.store.database import migrated_engine_for
from orgsync_pipeline.store.schema import webhook_inbox
from orgsync_pipeline.webhooks import MAX_BODY_BYTES, create_app, serve_in_thread
from tests.tcp_proxy import TcpProxy, proxy_for

CLERK_TIMESTAMP_S = 1716883200  # 2024-05-28T08:00:00Z
CLERK_INSTANT = datetime(2024, 5, 28, 8, 0, tzinfo=UTC)
# Svix gives up on a delivery after ~15 s; an unavailable database must be reported well before.
QUICKLY = 5.0


# -- helpers -------------------------------------------------------------------------------------


def new_secret() -> str:
    return "whsec_" + base64.b64encode(os.urandom(24)).decode()


def new_msg_id() -> str:
    return f"msg_{uuid.uuid4().hex}"


def clerk_event(
    event_type: str = "user.created", *, timestamp: float | None = CLERK_TIMESTAMP_S * 1000, **extra: Any
) -> dict[str, Any]:
    """A Clerk envelope (``object``, ``type``, ``timestamp`` in ms, ``instance_id``, ``data``)."""
    event: dict[str, Any] = {
        "object": "event",
        "type": event_type,
        "instance_id": "ins_test",
        "data": {"object": "user", "id": f"user_{uuid.uuid4().hex[:12]}", "first_name": "Zoë"},
        **extra,
    }
    if timestamp is not None:
        event["timestamp"] = timestamp
    return event


def encode(event: Any) -> bytes:
    return event if isinstance(event, bytes) else json.dumps(event).encode()


def svix_headers(secret: str, body: bytes, *, msg_id: str, at: datetime | None = None) -> dict[str, str]:
    """The three headers Svix sends, signed with ``secret`` over the exact ``body`` bytes."""
    seconds = int(at.timestamp()) if at else None
    return {
        **emulator_svix_headers(secret, body, msg_id=msg_id, timestamp=seconds),
        "content-type": "application/json",
    }


class Svix:
    """Delivers signed events to a receiver as Svix would (a redelivery keeps its svix-id and is
    signed again with a fresh timestamp)."""

    def __init__(self, base_url: str, secret: str) -> None:
        self.base_url = base_url
        self.secret = secret
        self.client = httpx.Client(base_url=base_url, timeout=20)

    def deliver(self, event: Any, *, msg_id: str | None = None, at: datetime | None = None) -> httpx.Response:
        body = encode(event)
        headers = svix_headers(self.secret, body, msg_id=msg_id or new_msg_id(), at=at)
        return self.client.post("/webhooks/clerk", content=body, headers=headers)

    def post(self, body: Any, headers: dict[str, str]) -> httpx.Response:
        return self.client.post("/webhooks/clerk", content=body, headers=headers)

    def close(self) -> None:
        self.client.close()


def receiver_settings(database_url: str, tmp_path: Path, **env: str) -> dict[str, str]:
    # Sensor mode: these tests look at what the receiver stores, before anything applies it.
    return {
        "DATABASE_URL": database_url,
        "ORGSYNC_HOME": str(tmp_path / "orgsync-home"),
        "ORGSYNC_WEBHOOK_APPLY": "sensor",
        **env,
    }


def inbox_rows(database_url: str) -> list[dict[str, Any]]:
    """Every inbox row, oldest first (the schema is migrated first, so an empty inbox reads as [])."""
    with migrated_engine_for(database_url).connect() as conn:
        rows = conn.execute(sa.select(webhook_inbox).order_by(webhook_inbox.c.id)).mappings().all()
    return [dict(row) for row in rows]


def svix_ids(database_url: str) -> list[str]:
    return [row["svix_id"] for row in inbox_rows(database_url)]


@pytest.fixture
def secret() -> str:
    return new_secret()


@pytest.fixture
def svix(database_url: str, secret: str, tmp_path: Path) -> Iterator[Svix]:
    """A receiver on the test's schema (no proxy), and a Svix sender holding its secret."""
    app = create_app(load_settings(receiver_settings(database_url, tmp_path, CLERK_WEBHOOK_SECRET=secret)))
    with serve_in_thread(app) as base_url:
        sender = Svix(base_url, secret)
        yield sender
        sender.close()


# -- a verified event ----------------------------------------------------------------------------


def test_a_verified_event_is_committed_as_pending_before_the_2xx(svix: Svix, database_url: str) -> None:
    event = clerk_event("organizationMembership.deleted")
    msg_id = new_msg_id()

    response = svix.deliver(event, msg_id=msg_id)

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "stored"
    [row] = inbox_rows(database_url)  # visible from another connection: committed before the answer
    assert row["id"] == response.json()["inbox_id"]
    assert row["svix_id"] == msg_id
    assert row["event_type"] == "organizationMembership.deleted"
    assert row["payload"] == event
    assert row["status"] == "pending"
    assert row["event_timestamp"] == CLERK_INSTANT
    assert row["applied_at"] is None


def test_the_raw_bytes_are_verified_not_a_reserialisation(svix: Svix, database_url: str) -> None:
    """Whitespace, key order and escapes as sent are what the signature covers."""
    body = (
        b'{ "data" : {"id":"user_1", "name":"Zo\\u00eb"},\n'
        b'  "type":"user.updated", "timestamp": 1716883200000 }'
    )

    response = svix.deliver(body)

    assert response.status_code == 200, response.text
    [row] = inbox_rows(database_url)
    assert row["payload"] == json.loads(body)


# Clerk's envelope timestamp as sent → the inbox's event_timestamp.
EVENT_TIMESTAMPS: list[tuple[Any, datetime | None]] = [
    (CLERK_TIMESTAMP_S * 1000, CLERK_INSTANT),  # milliseconds, as Clerk documents
    (CLERK_TIMESTAMP_S, CLERK_INSTANT),  # seconds, as some of Clerk's examples show
    (CLERK_TIMESTAMP_S * 1000 + 250, CLERK_INSTANT + timedelta(milliseconds=250)),
    (float(CLERK_TIMESTAMP_S), CLERK_INSTANT),
    (None, None),
    ("1716883200000", None),  # not a number: stored, without an event time
]


def test_clerk_event_timestamps_are_normalised(svix: Svix, database_url: str) -> None:
    """Milliseconds and seconds land on the same instant."""
    for timestamp, _ in EVENT_TIMESTAMPS:
        response = svix.deliver(clerk_event(timestamp=timestamp))
        assert response.status_code == 200, response.text

    rows = inbox_rows(database_url)
    assert [row["event_timestamp"] for row in rows] == [instant for _, instant in EVENT_TIMESTAMPS]


def test_unhandled_event_types_are_stored_as_ignored(svix: Svix, database_url: str) -> None:
    event_types = ["session.created", "email.created", "organizationDomain.created", "user.exploded"]
    for event_type in event_types:
        response = svix.deliver(clerk_event(event_type))
        assert 200 <= response.status_code < 300, response.text
        assert response.json()["status"] == "ignored"

    rows = inbox_rows(database_url)
    assert [(row["event_type"], row["status"]) for row in rows] == [(t, "ignored") for t in event_types]
    assert all(row["applied_at"] is not None for row in rows)


def test_healthz(svix: Svix) -> None:
    response = svix.client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


# -- redeliveries ----------------------------------------------------------------------------------


def test_a_redelivery_is_acknowledged_and_stored_once(svix: Svix, database_url: str) -> None:
    event = clerk_event()
    msg_id = new_msg_id()

    first = svix.deliver(event, msg_id=msg_id)
    second = svix.deliver(event, msg_id=msg_id, at=datetime.now(UTC) - timedelta(seconds=30))

    assert first.status_code == 200, first.text
    assert second.status_code == 200, second.text
    assert second.json() == {"status": "duplicate", "inbox_id": first.json()["inbox_id"]}
    assert svix_ids(database_url) == [msg_id]


def test_concurrent_redeliveries_are_stored_once(svix: Svix, database_url: str) -> None:
    event = clerk_event()
    msg_id = new_msg_id()
    responses: list[httpx.Response] = []

    def deliver() -> None:
        with httpx.Client(base_url=svix.base_url, timeout=20) as client:
            body = encode(event)
            responses.append(
                client.post(
                    "/webhooks/clerk", content=body, headers=svix_headers(svix.secret, body, msg_id=msg_id)
                )
            )

    threads = [threading.Thread(target=deliver) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert [r.status_code for r in responses] == [200] * 8
    assert len({r.json()["inbox_id"] for r in responses}) == 1
    assert svix_ids(database_url) == [msg_id]


# -- signatures ------------------------------------------------------------------------------------


def test_a_tampered_body_is_401_and_not_stored(svix: Svix, database_url: str) -> None:
    original = encode(clerk_event("user.updated"))
    headers = svix_headers(svix.secret, original, msg_id=new_msg_id())
    tampered = original.replace(b"user.updated", b"user.deleted")

    response = svix.post(tampered, headers)

    assert response.status_code == 401
    assert "signature" in response.json()["error"]
    assert inbox_rows(database_url) == []


def test_a_body_signed_with_another_secret_is_401(svix: Svix, database_url: str) -> None:
    body = encode(clerk_event())

    response = svix.post(body, svix_headers(new_secret(), body, msg_id=new_msg_id()))

    assert response.status_code == 401
    assert inbox_rows(database_url) == []


@pytest.mark.parametrize(
    "offset",
    [timedelta(minutes=-6), timedelta(minutes=6), timedelta(hours=-25), timedelta(days=365)],
    ids=["6-min-old", "6-min-ahead", "a-day-old", "a-year-ahead"],
)
def test_timestamps_outside_five_minutes_are_401(svix: Svix, database_url: str, offset: timedelta) -> None:
    """Correctly signed, but for a moment outside the ±5 min tolerance (a replay, or a bad clock)."""
    response = svix.deliver(clerk_event(), at=datetime.now(UTC) + offset)

    assert response.status_code == 401
    assert "timestamp" in response.json()["error"]
    assert inbox_rows(database_url) == []


@pytest.mark.parametrize(
    "offset", [timedelta(minutes=-4), timedelta(minutes=4)], ids=["4-min-old", "4-min-ahead"]
)
def test_timestamps_within_five_minutes_are_accepted(
    svix: Svix, database_url: str, offset: timedelta
) -> None:
    assert svix.deliver(clerk_event(), at=datetime.now(UTC) + offset).status_code == 200
    assert len(inbox_rows(database_url)) == 1


@pytest.mark.parametrize("header", ["svix-id", "svix-timestamp", "svix-signature"])
def test_each_missing_header_is_400(svix: Svix, database_url: str, header: str) -> None:
    body = encode(clerk_event())
    headers = svix_headers(svix.secret, body, msg_id=new_msg_id())
    del headers[header]

    response = svix.post(body, headers)

    assert response.status_code == 400
    assert header in response.json()["error"]
    assert inbox_rows(database_url) == []


def test_no_svix_headers_at_all_is_400(svix: Svix, database_url: str) -> None:
    response = svix.post(encode(clerk_event()), {"content-type": "application/json"})

    assert response.status_code == 400
    assert inbox_rows(database_url) == []


GARBAGE_HEADERS = {
    "signature-v1-bogus": {"svix-signature": "v1,bogus"},
    "signature-without-comma": {"svix-signature": "v1bogus"},
    "signature-two-commas": {"svix-signature": "v1,abc,def"},
    "signature-empty-v1": {"svix-signature": "v1,"},
    "signature-only-other-version": {"svix-signature": "v2," + base64.b64encode(os.urandom(32)).decode()},
    "signature-not-base64": {"svix-signature": "v1,!!!!$$$$%%%%"},
    "signature-empty": {"svix-signature": ""},
    "signature-double-space": {"svix-signature": "v1,AAAA  v1,BBBB"},
    "signature-huge": {"svix-signature": " ".join(["v1,AAAA"] * 1000)},
    "timestamp-not-numeric": {"svix-timestamp": "yesterday"},
    "timestamp-empty": {"svix-timestamp": ""},
    "timestamp-nan": {"svix-timestamp": "nan"},
    "timestamp-inf": {"svix-timestamp": "inf"},
    "timestamp-overflow": {"svix-timestamp": "1e400"},
    "timestamp-huge-int": {"svix-timestamp": "9" * 40},
    "timestamp-negative": {"svix-timestamp": "-1"},
    "timestamp-latin1": {"svix-timestamp": "17168832\u00b200"},
    "id-empty": {"svix-id": ""},
    "all-empty": {"svix-id": "", "svix-timestamp": "", "svix-signature": ""},
}


def test_garbage_headers_are_4xx_never_500(svix: Svix, database_url: str) -> None:
    """Each case is a correctly signed delivery with one or more headers replaced by garbage."""
    answers: dict[str, tuple[int, str]] = {}
    for case, garbage in GARBAGE_HEADERS.items():
        body = encode(clerk_event())
        headers = {**svix_headers(svix.secret, body, msg_id=new_msg_id()), **garbage}
        response = svix.client.post(
            "/webhooks/clerk",
            content=body,
            headers={name: value.encode("latin-1") for name, value in headers.items()},
        )
        answers[case] = (response.status_code, response.text)

    wrong = {case: answer for case, answer in answers.items() if not 400 <= answer[0] < 500}
    assert wrong == {}
    assert all(json.loads(text)["error"] for _, text in answers.values())
    assert inbox_rows(database_url) == []


def test_a_body_that_is_not_utf8_is_4xx_never_500(svix: Svix, database_url: str) -> None:
    """Signed correctly over bytes that are not UTF-8 (svix's own ``sign`` only takes text)."""
    body = b'{"type":"user.created","data":{},"x":"\xff\xfe"}'
    msg_id, timestamp = new_msg_id(), str(int(time.time()))
    key = base64.b64decode(svix.secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    headers = {
        "svix-id": msg_id,
        "svix-timestamp": timestamp,
        "svix-signature": "v1," + base64.b64encode(digest).decode(),
    }

    response = svix.post(body, headers)

    assert 400 <= response.status_code < 500, response.text
    assert inbox_rows(database_url) == []


@pytest.mark.parametrize("valid_first", [True, False], ids=["valid-first", "valid-last"])
def test_one_valid_signature_among_several_passes(svix: Svix, database_url: str, valid_first: bool) -> None:
    """During a secret rotation Svix signs with both secrets, space-separated."""
    body = encode(clerk_event())
    headers = svix_headers(svix.secret, body, msg_id=new_msg_id())
    other = svix_headers(new_secret(), body, msg_id=headers["svix-id"])["svix-signature"]
    future_scheme = "v1a," + base64.b64encode(os.urandom(64)).decode()
    signatures = [headers["svix-signature"], other, future_scheme]
    headers["svix-signature"] = " ".join(signatures if valid_first else signatures[::-1])

    response = svix.post(body, headers)

    assert response.status_code == 200, response.text
    assert len(inbox_rows(database_url)) == 1


# -- bodies ----------------------------------------------------------------------------------------


NOT_CLERK_EVENTS = {
    "bad-json": b'{"type": "user.created", "data": {',
    "empty": b"",
    "json-array": b'[{"type": "user.created", "data": {}}]',
    "json-string": b'"user.created"',
    "no-type": json.dumps({"object": "event", "data": {"id": "user_1"}}).encode(),
    "no-data": json.dumps({"object": "event", "type": "user.created"}).encode(),
    "data-null": json.dumps({"type": "user.created", "data": None}).encode(),
    "data-list": json.dumps({"type": "user.created", "data": [1, 2]}).encode(),
    "data-string": json.dumps({"type": "user.created", "data": "user_1"}).encode(),
    "type-not-string": json.dumps({"type": 7, "data": {}}).encode(),
    "type-null": json.dumps({"type": None, "data": {}}).encode(),
}


def test_a_verified_body_that_is_not_a_clerk_event_is_400(svix: Svix, database_url: str) -> None:
    answers = {case: svix.deliver(body) for case, body in NOT_CLERK_EVENTS.items()}

    assert {case: r.status_code for case, r in answers.items() if r.status_code != 400} == {}
    assert all(r.json()["error"] for r in answers.values())
    assert inbox_rows(database_url) == []


def test_a_body_of_exactly_one_mebibyte_is_accepted(svix: Svix, database_url: str) -> None:
    event = clerk_event()
    event["data"]["padding"] = ""
    event["data"]["padding"] = "x" * (MAX_BODY_BYTES - len(encode(event)))
    body = encode(event)
    assert len(body) == MAX_BODY_BYTES

    response = svix.deliver(body)

    assert response.status_code == 200, response.text
    assert len(inbox_rows(database_url)) == 1


def _oversized_event() -> bytes:
    event = clerk_event()
    event["data"]["padding"] = "x" * MAX_BODY_BYTES
    return encode(event)


def test_a_body_over_one_mebibyte_is_413_by_content_length(svix: Svix, database_url: str) -> None:
    body = _oversized_event()
    headers = svix_headers(svix.secret, body, msg_id=new_msg_id())

    response = svix.post(body, headers)

    assert response.request.headers["content-length"] == str(len(body))
    assert response.status_code == 413
    assert inbox_rows(database_url) == []


def test_a_chunked_body_over_one_mebibyte_is_413(svix: Svix, database_url: str) -> None:
    """No Content-Length to check up front: the receiver must stop reading past the limit."""
    body = _oversized_event()
    headers = svix_headers(svix.secret, body, msg_id=new_msg_id())

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 64 * 1024):
            yield body[start : start + 64 * 1024]

    response = svix.post(chunks(), headers)

    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 413
    assert inbox_rows(database_url) == []


def test_a_chunked_body_under_the_limit_is_accepted(svix: Svix, database_url: str) -> None:
    body = encode(clerk_event())
    headers = svix_headers(svix.secret, body, msg_id=new_msg_id())

    response = svix.post(iter([body[:10], body[10:]]), headers)

    assert response.status_code == 200, response.text
    assert inbox_rows(database_url)[0]["payload"] == json.loads(body)


# -- the signing secret at start-up ----------------------------------------------------------------


def test_without_a_secret_create_app_refuses_to_start(database_url: str, tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as raised:
        create_app(load_settings(receiver_settings(database_url, tmp_path)))

    assert "CLERK_WEBHOOK_SECRET" in str(raised.value)
    assert "whsec_" in str(raised.value)


def test_an_empty_secret_is_a_missing_secret(database_url: str, tmp_path: Path) -> None:
    settings = receiver_settings(
        database_url, tmp_path, CLERK_WEBHOOK_SECRET="", CLERK_WEBHOOK_SIGNING_SECRET=""
    )

    with pytest.raises(SettingsError, match="CLERK_WEBHOOK_SECRET"):
        create_app(load_settings(settings))


def test_clerk_webhook_signing_secret_is_accepted_too(database_url: str, tmp_path: Path, secret: str) -> None:
    app = create_app(
        load_settings(receiver_settings(database_url, tmp_path, CLERK_WEBHOOK_SIGNING_SECRET=secret))
    )
    with serve_in_thread(app) as base_url:
        svix = Svix(base_url, secret)
        response = svix.deliver(clerk_event())
        forged = Svix(base_url, new_secret()).deliver(clerk_event())
        svix.close()

    assert response.status_code == 200, response.text
    assert forged.status_code == 401
    assert len(inbox_rows(database_url)) == 1


# Values the svix package itself refuses, and values it takes although no Svix secret looks like
# them: a Clerk secret key pasted into the wrong variable, or a secret with a stray character.
CLERK_SECRET_KEY_SHAPED = "sk_test_" + "AbCdEfGhIjKlMnOpQrStUvWxYz0123456789abcdefgh"
INVALID_SECRETS = [
    pytest.param("whsec_", id="prefix-only"),
    pytest.param("whsec_a", id="one-base64-char"),
    pytest.param("whsec_!!!!", id="no-base64-chars"),
    pytest.param(
        CLERK_SECRET_KEY_SHAPED,
        id="clerk-secret-key",
    ),
    pytest.param(
        "whsec_" + base64.b64encode(b"0123456789abcdefghijklmn").decode()[:-4] + "#$%&AAAA",
        id="stray-characters",
    ),
]


@pytest.mark.parametrize("value", INVALID_SECRETS)
def test_an_invalid_secret_is_a_clear_start_up_error(database_url: str, tmp_path: Path, value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        create_app(load_settings(receiver_settings(database_url, tmp_path, CLERK_WEBHOOK_SECRET=value)))

    message = str(raised.value)
    assert "CLERK_WEBHOOK_SECRET" in message
    if value != "whsec_":  # the message names the prefix itself
        assert value not in message
    assert raised.value.__cause__ is None


def _cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLERK_WEBHOOK_")}
    return {**env, "ORGSYNC_HOME": str(tmp_path / "orgsync-home"), **extra}


def test_serve_webhooks_without_a_secret_exits_at_once(tmp_path: Path) -> None:
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-m", "orgsync_pipeline.cli", "serve-webhooks", "--port", "0"],
        env=_cli_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode != 0
    assert "CLERK_WEBHOOK_SECRET" in completed.stderr
    assert "Traceback" not in completed.stderr
    assert time.monotonic() - started < 30


def test_serve_webhooks_with_an_invalid_secret_exits_without_showing_it(tmp_path: Path) -> None:
    value = "whsec_a"
    completed = subprocess.run(
        [sys.executable, "-m", "orgsync_pipeline.cli", "serve-webhooks", "--port", "0"],
        env=_cli_env(tmp_path, CLERK_WEBHOOK_SECRET=value),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert completed.returncode != 0
    assert "CLERK_WEBHOOK_SECRET" in completed.stderr
    assert value not in completed.stderr
    assert "Traceback" not in completed.stderr


# -- database outages ------------------------------------------------------------------------------


@pytest.fixture
def proxied(database_url: str, secret: str, tmp_path: Path) -> Iterator[tuple[Svix, TcpProxy]]:
    """A receiver whose DATABASE_URL goes through a switchable TCP proxy to the test's schema,
    connected before the test starts.

    Its first use connects and migrates under a database-wide advisory lock, which other test
    processes may hold for a while: over 10 s that first request was a 503 (a flaky failure, not
    an outage). So the schema is migrated here first, and the test starts once /healthz is 200.
    """
    migrated_engine_for(database_url)
    proxy, proxied_url = proxy_for(database_url)
    app = create_app(load_settings(receiver_settings(proxied_url, tmp_path, CLERK_WEBHOOK_SECRET=secret)))
    try:
        with serve_in_thread(app) as base_url:
            sender = Svix(base_url, secret)
            _wait_until_connected(sender)
            yield sender, proxy
            sender.close()
    finally:
        proxy.down()


def _wait_until_connected(sender: Svix, attempts: int = 12) -> None:
    """Ask /healthz until the receiver has its database (each try gives up after its own 10 s)."""
    for _attempt in range(attempts):
        if sender.client.get("/healthz").status_code == 200:
            return
        time.sleep(0.5)
    pytest.fail("the receiver never reached its database through the proxy")


def _assert_retry_later(response: httpx.Response, within: float = QUICKLY) -> None:
    assert response.status_code == 503, response.text
    assert int(response.headers["retry-after"]) > 0
    assert response.elapsed.total_seconds() < within


def test_an_outage_answers_503_and_the_redeliveries_lose_nothing(
    proxied: tuple[Svix, TcpProxy], database_url: str
) -> None:
    svix, proxy = proxied
    before = {new_msg_id(): clerk_event() for _ in range(3)}
    during = {new_msg_id(): clerk_event("organization.updated") for _ in range(4)}

    for msg_id, event in before.items():
        assert svix.deliver(event, msg_id=msg_id).status_code == 200
    assert svix.client.get("/healthz").status_code == 200
    assert proxy.connections_accepted > 0  # the receiver's database really is behind the proxy

    proxy.down()  # the pooled connections are cut and new ones refused
    for msg_id, event in during.items():
        _assert_retry_later(svix.deliver(event, msg_id=msg_id))
    health = svix.client.get("/healthz")
    assert health.status_code == 503
    assert health.elapsed.total_seconds() < QUICKLY
    assert sorted(svix_ids(database_url)) == sorted(before)  # read past the proxy: nothing half-stored

    proxy.up()  # Svix retries the failed deliveries, same svix-ids, newly signed
    for msg_id, event in during.items():
        response = svix.deliver(event, msg_id=msg_id)
        assert response.status_code == 200, response.text
        assert response.json()["status"] == "stored"
    replayed = next(iter(before))  # and a replay from the dashboard of one that had succeeded
    assert svix.deliver(before[replayed], msg_id=replayed).json()["status"] == "duplicate"
    assert svix.client.get("/healthz").status_code == 200

    rows = inbox_rows(database_url)
    assert sorted(row["svix_id"] for row in rows) == sorted([*before, *during])
    assert {row["svix_id"]: row["payload"] for row in rows} == {**before, **during}


def test_a_pooled_connection_the_database_closed_is_replaced_without_a_503(
    proxied: tuple[Svix, TcpProxy], database_url: str
) -> None:
    """After a database restart every pooled connection is dead; the next delivery still lands."""
    svix, proxy = proxied
    assert svix.deliver(clerk_event()).status_code == 200  # leaves a connection in the pool
    proxy.down()  # cuts it, as a restart would
    proxy.up()

    event, msg_id = clerk_event(), new_msg_id()
    response = svix.deliver(event, msg_id=msg_id)
    assert response.status_code == 200, response.text
    assert {row["svix_id"]: row["payload"] for row in inbox_rows(database_url)}[msg_id] == event


def test_the_receiver_starts_while_the_database_is_down(
    database_url: str, secret: str, tmp_path: Path
) -> None:
    """It connects (and migrates the fresh schema) on first use, so it can start and answer 503."""
    proxy, proxied_url = proxy_for(database_url)
    proxy.down()
    try:
        app = create_app(load_settings(receiver_settings(proxied_url, tmp_path, CLERK_WEBHOOK_SECRET=secret)))
        with serve_in_thread(app) as base_url:
            svix = Svix(base_url, secret)
            event, msg_id = clerk_event(), new_msg_id()

            _assert_retry_later(svix.deliver(event, msg_id=msg_id))
            assert svix.client.get("/healthz").status_code == 503

            proxy.up()
            response = svix.deliver(event, msg_id=msg_id)
            assert response.status_code == 200, response.text
            assert svix.client.get("/healthz").status_code == 200
            svix.close()
    finally:
        proxy.down()

    [row] = inbox_rows(database_url)
    assert (row["svix_id"], row["payload"], row["status"]) == (msg_id, event, "pending")


def test_a_flapping_database_with_retrying_senders_stores_every_event_once(
    proxied: tuple[Svix, TcpProxy], database_url: str
) -> None:
    """Senders redeliver until they get a 2xx while the database goes down and up under them; every
    answer is a 200 or a quick 503, and every event ends up in the inbox exactly once."""
    svix, proxy = proxied
    events = {new_msg_id(): clerk_event() for _ in range(40)}
    statuses: list[int] = []
    slow: list[float] = []
    stop_flapping = threading.Event()
    first_outage = threading.Event()

    def flap() -> None:
        while not stop_flapping.is_set():
            proxy.down()
            first_outage.set()  # the senders start in an outage, however fast they are afterwards
            time.sleep(0.15)
            proxy.up()
            time.sleep(0.15)

    def send(batch: dict[str, dict[str, Any]]) -> None:
        with httpx.Client(base_url=svix.base_url, timeout=20) as client:
            for msg_id, event in batch.items():
                for _attempt in range(200):
                    body = encode(event)
                    response = client.post(
                        "/webhooks/clerk",
                        content=body,
                        headers=svix_headers(svix.secret, body, msg_id=msg_id),
                    )
                    statuses.append(response.status_code)
                    if response.status_code == 200:
                        break
                    if response.elapsed.total_seconds() >= QUICKLY:
                        slow.append(response.elapsed.total_seconds())
                    time.sleep(0.02)

    flapper = threading.Thread(target=flap, daemon=True)
    flapper.start()
    assert first_outage.wait(timeout=10)
    ids = list(events)
    senders = [
        threading.Thread(target=send, args=({i: events[i] for i in ids[n::4]},), daemon=True)
        for n in range(4)
    ]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(timeout=60)
    stop_flapping.set()
    flapper.join(timeout=5)
    proxy.up()

    assert not any(sender.is_alive() for sender in senders)
    assert set(statuses) <= {200, 503}, sorted(set(statuses))
    assert slow == []
    assert statuses.count(200) == len(events)
    assert 503 in statuses, "the outages were not noticed: the test proves nothing"
    assert sorted(svix_ids(database_url)) == sorted(events)


SVIX_GIVES_UP_AFTER = 15.0


def test_a_stalled_database_is_answered_503_before_svix_gives_up(
    proxied: tuple[Svix, TcpProxy], database_url: str
) -> None:
    svix, proxy = proxied
    assert svix.deliver(clerk_event()).status_code == 200  # a pooled connection through the proxy
    event, msg_id = clerk_event(), new_msg_id()

    proxy.stall()
    try:
        body = encode(event)
        try:
            response = svix.client.post(
                "/webhooks/clerk",
                content=body,
                headers=svix_headers(svix.secret, body, msg_id=msg_id),
                timeout=SVIX_GIVES_UP_AFTER - 3,
            )
        except httpx.TimeoutException:
            pytest.fail(f"no answer within {SVIX_GIVES_UP_AFTER - 3:g} s while the database is stalled")
        _assert_retry_later(response, within=SVIX_GIVES_UP_AFTER - 3)
    finally:
        proxy.resume()

    assert svix.deliver(event, msg_id=msg_id).status_code == 200
    assert svix_ids(database_url).count(msg_id) == 1
