"""The Clerk emulator as webhook sender: events, envelopes, Svix signatures and retries over loopback."""

import base64
import hashlib
import hmac
import json
import os
import re
import socket
import threading
import time
from collections import deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from svix.webhooks import Webhook, WebhookVerificationError

from orgsync_pipeline.clerk.emulator import ClerkEmulator, svix_headers

SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()
MSG_ID_RE = re.compile(r"^msg_[0-9A-Za-z]{27}$")
FAST = (0.0, 0.05)  # retry delays that keep the tests quick


class RecordingEndpoint:
    """A loopback webhook endpoint recording ``(headers, raw body)`` and answering the statuses it is given
    (then 200); ``slow_first`` seconds of sleep before answering the first request."""

    def __init__(self) -> None:
        self.received: list[tuple[dict[str, str], bytes]] = []
        self.statuses: deque[int] = deque()
        self.slow_first = 0.0
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver._lock:
                    first = not receiver.received
                    receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                    status = receiver.statuses.popleft() if receiver.statuses else 200
                if first and receiver.slow_first:
                    time.sleep(receiver.slow_first)
                try:
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except OSError:  # the sender timed out and hung up
                    pass

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/clerk"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def events(self) -> list[dict]:
        return [json.loads(body) for _, body in self.received]


@pytest.fixture
def receiver() -> Iterator[RecordingEndpoint]:
    recv = RecordingEndpoint()
    try:
        yield recv
    finally:
        recv.close()


def _verify(headers: dict[str, str], body: bytes) -> None:
    assert Webhook(SECRET).verify(body, headers) is None  # svix 2.x: None on success, raises otherwise


def test_svix_headers_sign_the_exact_body() -> None:
    body = json.dumps({"type": "user.created", "data": {"first_name": "Zoë"}}, ensure_ascii=False).encode()

    headers = svix_headers(SECRET, body)

    assert set(headers) == {"svix-id", "svix-timestamp", "svix-signature"}
    assert MSG_ID_RE.match(headers["svix-id"])
    assert abs(int(headers["svix-timestamp"]) - time.time()) < 5
    _verify(headers, body)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body.replace(b"Zo", b"Jo"), headers)

    fixed = svix_headers(SECRET, body, msg_id="msg_fixed", timestamp=1_716_883_200)
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    digest = hmac.new(key, b"msg_fixed.1716883200." + body, hashlib.sha256).digest()
    assert fixed == {
        "svix-id": "msg_fixed",
        "svix-timestamp": "1716883200",
        "svix-signature": "v1," + base64.b64encode(digest).decode(),
    }
    assert svix_headers(SECRET, body)["svix-id"] != headers["svix-id"]


def test_mutations_emit_clerk_events_in_order(emulator: ClerkEmulator, receiver: RecordingEndpoint) -> None:
    emulator.add_webhook_endpoint(receiver.url, SECRET, retry_delays=FAST)

    ada = emulator.create_user("Ada", "Lovelace", "ada@example.com")
    alan = emulator.create_user("Alan", "Turing", None)
    org = emulator.create_organization("Acme Corp")
    renamed = emulator.update_organization(org["id"], name="Acme Inc")
    ada_mem = emulator.create_membership(org["id"], ada["id"], "org:admin")
    emulator.create_membership(org["id"], alan["id"])
    moved = emulator.update_organization(org["id"], slug="acme-inc")  # memberships follow, silently
    promoted = emulator.update_membership(org["id"], alan["id"], role="org:admin")
    removed = emulator.delete_membership(org["id"], ada["id"])
    deleted_org = emulator.delete_organization(org["id"])  # cascades Alan's membership: no event for it
    ada_updated = emulator.update_user(ada["id"], first_name="Augusta Ada")
    deleted_user = emulator.delete_user(ada["id"])
    assert emulator.wait_for_deliveries(5)

    expected = [
        ("user.created", ada),
        ("user.created", alan),
        ("organization.created", org),
        ("organization.updated", renamed),
        ("organizationMembership.created", ada_mem),
        ("organizationMembership.created", None),
        ("organization.updated", moved),
        ("organizationMembership.updated", promoted),
        ("organizationMembership.deleted", removed),
        ("organization.deleted", deleted_org),
        ("user.updated", ada_updated),
        ("user.deleted", deleted_user),
    ]
    events = receiver.events()
    assert [e["type"] for e in events] == [t for t, _ in expected]
    assert events == emulator.webhook_events  # delivered in emission order, payloads intact
    for (event_type, data), event in zip(expected, events, strict=True):
        if data is not None:
            assert event["data"] == data, event_type

    # Payload shapes: DeletedObjects for organization/user, the full membership for membership deletions.
    assert deleted_org == {"object": "organization", "id": org["id"], "slug": "acme-inc", "deleted": True}
    assert deleted_user == {"object": "user", "id": ada["id"], "deleted": True}
    assert removed["object"] == "organization_membership" and removed["id"] == ada_mem["id"]
    assert (
        removed["organization"]["slug"] == "acme-inc" and removed["public_user_data"]["user_id"] == ada["id"]
    )
    assert (
        events[7]["data"]["role"] == "org:admin" and events[7]["data"]["organization"]["name"] == "Acme Inc"
    )

    # Envelopes: Clerk's fields, timestamps in ms equal to the mutation's time, strictly increasing.
    for event in events:
        assert event["object"] == "event" and event["instance_id"] == emulator.instance_id
        assert {"object", "type", "timestamp", "instance_id", "data"} <= set(event)
    stamps = [e["timestamp"] for e in events]
    assert all(isinstance(s, int) and s > 10**12 for s in stamps)
    assert stamps == sorted(set(stamps))
    assert stamps[2] == org["created_at"] and stamps[3] == renamed["updated_at"]
    assert stamps[4] == ada_mem["created_at"] and stamps[7] == promoted["updated_at"]
    assert stamps[10] == ada_updated["updated_at"]
    assert abs(stamps[-1] - time.time() * 1000) < 5000

    # Transport: signed, compact UTF-8 JSON, one svix-id per event, one successful attempt each.
    ids = []
    for (headers, body), event in zip(receiver.received, events, strict=True):
        _verify(headers, body)
        assert headers["content-type"] == "application/json"
        assert body == json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
        ids.append(headers["svix-id"])
    assert all(MSG_ID_RE.match(i) for i in ids) and len(set(ids)) == len(ids)
    assert [(d.msg_id, d.event_type, d.attempt, d.status_code, d.error) for d in emulator.deliveries] == [
        (i, e["type"], 1, 200, None) for i, e in zip(ids, events, strict=True)
    ]
    assert all(d.url == receiver.url for d in emulator.deliveries) and not emulator.failed_deliveries


def test_retries_keep_the_svix_id_and_re_sign(emulator: ClerkEmulator, receiver: RecordingEndpoint) -> None:
    receiver.statuses.extend([500, 503])
    emulator.add_webhook_endpoint(receiver.url, SECRET, retry_delays=(0.0, 1.05))

    msg_id = emulator.send_event("session.created", {"object": "session", "id": "sess_1"})
    replay = {"object": "user", "id": "user_old", "deleted": True}
    next_id = emulator.send_event("user.deleted", replay, timestamp_ms=1_716_883_200_000)
    assert emulator.wait_for_deliveries(5)

    assert [h["svix-id"] for h, _ in receiver.received] == [msg_id, msg_id, msg_id, next_id]
    for headers, body in receiver.received:
        _verify(headers, body)
    bodies = {body for _, body in receiver.received[:3]}
    assert len(bodies) == 1  # the same bytes on every retry
    stamps = [int(h["svix-timestamp"]) for h, _ in receiver.received]
    assert stamps[2] > stamps[0]  # a retry is signed afresh
    events = receiver.events()
    assert events[0]["type"] == "session.created" and events[0]["data"] == {
        "object": "session",
        "id": "sess_1",
    }
    assert events[3]["timestamp"] == 1_716_883_200_000 and events[3]["data"] == replay
    assert [(d.msg_id, d.attempt, d.status_code) for d in emulator.deliveries] == [
        (msg_id, 1, 500),
        (msg_id, 2, 503),
        (msg_id, 3, 200),
        (next_id, 1, 200),
    ]
    assert not emulator.failed_deliveries


def test_exhausted_retries_fail_the_event_and_move_on(
    emulator: ClerkEmulator, receiver: RecordingEndpoint
) -> None:
    receiver.statuses.extend([500, 500, 500])
    emulator.add_webhook_endpoint(receiver.url, SECRET, retry_delays=FAST)

    org = emulator.create_organization("Doomed")
    emulator.delete_organization(org["id"])
    assert emulator.wait_for_deliveries(5)

    assert [(d.event_type, d.attempt, d.status_code) for d in emulator.deliveries] == [
        ("organization.created", 1, 500),
        ("organization.created", 2, 500),
        ("organization.created", 3, 500),
        ("organization.deleted", 1, 200),
    ]
    assert emulator.failed_deliveries == [emulator.deliveries[2]]


def test_connection_refused_eventually_fails(emulator: ClerkEmulator) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here once the socket is closed
    emulator.add_webhook_endpoint(f"http://127.0.0.1:{port}/hook", SECRET, retry_delays=FAST)

    msg_id = emulator.send_event("session.created", {"object": "session", "id": "sess_1"})
    assert emulator.wait_for_deliveries(5)

    assert [(d.msg_id, d.attempt, d.status_code) for d in emulator.deliveries] == [
        (msg_id, 1, None),
        (msg_id, 2, None),
        (msg_id, 3, None),
    ]
    assert all(d.error and "ConnectError" in d.error for d in emulator.deliveries)
    assert [d.msg_id for d in emulator.failed_deliveries] == [msg_id]


def test_timeouts_are_retried(emulator: ClerkEmulator, receiver: RecordingEndpoint) -> None:
    receiver.slow_first = 0.6
    emulator.add_webhook_endpoint(receiver.url, SECRET, retry_delays=(0.0,), timeout=0.2)

    emulator.create_user("Grace", "Hopper", "grace@example.com")
    assert emulator.wait_for_deliveries(5)

    first, second = emulator.deliveries
    assert first.status_code is None and first.error and "Timeout" in first.error
    assert (second.attempt, second.status_code) == (2, 200)
    assert [h["svix-id"] for h, _ in receiver.received] == [first.msg_id] * 2


def test_no_endpoint_means_no_events(emulator: ClerkEmulator) -> None:
    emulator.seed_sample(organizations=2, users=3, memberships_per_org=2)
    org_id = next(iter(emulator.organizations))
    emulator.update_organization(org_id, name="Renamed")
    emulator.delete_organization(org_id)

    assert emulator.webhook_events == [] and emulator.deliveries == []
    assert emulator.wait_for_deliveries(0)
    with pytest.raises(RuntimeError, match="no webhook endpoint"):
        emulator.send_event("session.created", {})


def test_stop_pauses_delivery_and_start_resumes(receiver: RecordingEndpoint) -> None:
    emulator = ClerkEmulator()
    emulator.start()
    try:
        emulator.add_webhook_endpoint(receiver.url, SECRET, retry_delays=FAST)
        emulator.seed_sample(organizations=2, users=3, memberships_per_org=2)
        assert emulator.wait_for_deliveries(5)
        types = [e["type"] for e in receiver.events()]
        assert sorted(types) == sorted(
            ["user.created"] * 3 + ["organization.created"] * 2 + ["organizationMembership.created"] * 4
        )

        thread = emulator._webhook_thread
        assert thread is not None and thread.is_alive()
        emulator.stop()
        assert not thread.is_alive()
        emulator.create_organization("While Stopped")
        assert not emulator.wait_for_deliveries(0.3)  # queued, not sent
        assert len(receiver.received) == 9

        emulator.start()
        assert emulator.wait_for_deliveries(5)
        assert receiver.events()[-1]["type"] == "organization.created"
        assert receiver.events()[-1]["data"]["name"] == "While Stopped"
    finally:
        emulator.stop()
