"""The receiver never answers 500 (issue 8.3): fuzzed headers and bodies, signed and unsigned.

Answers are only 2xx, 4xx or 503, reasons are our own words, and the inbox holds exactly the
correctly signed Clerk events, nothing unverified.
"""

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import httpx
import sqlalchemy as sa
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine
from starlette.testclient import TestClient

from orgsync_pipeline.settings import load_settings
from orgsync_pipeline.store.schema import webhook_inbox
from orgsync_pipeline.webhooks import create_app
from tests.support import Receiver

FUZZ = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def sign(secret: str, msg_id: str, body: bytes, timestamp: str | None = None) -> dict[str, str]:
    """Svix's headers over the raw bytes (also bytes that are not UTF-8, which svix's signer refuses)."""
    timestamp = timestamp or str(int(time.time()))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    digest = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return {
        "svix-id": msg_id,
        "svix-timestamp": timestamp,
        "svix-signature": "v1," + base64.b64encode(digest).decode(),
    }


def event(data: Any) -> bytes:
    return json.dumps(
        {"object": "event", "type": "user.updated", "timestamp": 1716883200000, "data": data}
    ).encode()


def deep(levels: int) -> bytes:
    return b'{"type":"user.updated","data":{"x":' + b"[" * levels + b"]" * levels + b"}}"


# What HTTP lets a header value hold (h11 refuses control characters).
header_chars = st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f")
header_text = st.text(header_chars, max_size=40)
bodies = st.one_of(
    st.binary(max_size=200),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
        max_leaves=10,
    ).map(event),
    st.sampled_from([deep(2000), deep(300), b"\xff\xfe{}", event("\x00"), event({"a": "\x00"}), b"NaN"]),
)
msg_ids = st.one_of(
    st.uuids().map(lambda u: f"msg_{u.hex}"),
    st.text(header_chars, max_size=20),
    st.integers(256, 4000).map(lambda n: "m" * n),
)


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str], bool]:
    """(body, headers, correctly signed?): signed ones may then get one header mutated."""
    body = draw(bodies)
    msg_id = draw(msg_ids)
    signed = draw(st.booleans())
    headers = sign(SECRET[0], msg_id, body) if signed else {}
    for name in draw(st.lists(st.sampled_from(["svix-id", "svix-timestamp", "svix-signature"]), max_size=2)):
        headers[name] = draw(header_text)
        signed = False
    return body, {name: value.encode("latin-1") for name, value in headers.items()}, signed


SECRET: list[str] = []  # the test's secret, for the strategy above


def inbox_ids(engine: Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.select(webhook_inbox.c.svix_id)).scalars())


def check(response: httpx.Response) -> None:
    assert (
        200 <= response.status_code < 300 or 400 <= response.status_code < 500 or response.status_code == 503
    )
    if response.status_code >= 400:
        reason = response.json()["error"]
        assert len(reason) < 200 and "psycopg" not in reason and "SQL" not in reason


def stored_only_signed(engine: Engine, accepted: set[str]) -> None:
    assert inbox_ids(engine) <= accepted


@FUZZ
@given(request=requests())
def test_fuzzed_requests_in_process(engine: Engine, webhook_secret: str, request: tuple) -> None:
    SECRET[:] = [webhook_secret]
    client = TestClient(create_app(load_settings()), raise_server_exceptions=False)
    body, headers, _ = request
    response = client.post("/webhooks/clerk", content=body, headers=headers)
    check(response)
    if response.status_code < 300:
        assert headers["svix-id"].decode("latin-1") in inbox_ids(engine)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(request=requests())
def test_fuzzed_requests_over_tcp(engine: Engine, receiver: Receiver, request: tuple) -> None:
    SECRET[:] = [receiver.secret]
    body, headers, signed = request
    before = inbox_ids(engine)
    try:
        response = httpx.post(f"{receiver.url}/webhooks/clerk", content=body, headers=headers, timeout=30)
    except httpx.LocalProtocolError:
        reject()  # a header HTTP/1.1 cannot carry (e.g. a value of spaces): no client can send it
    check(response)
    added = inbox_ids(engine) - before
    if not signed:
        assert added == set(), "an unverified request was stored"


def test_named_hostile_requests(engine: Engine, receiver: Receiver) -> None:
    """The cases issue 8 found, each with its own reason."""
    cases = {
        "deep": (deep(2000), f"msg_{uuid.uuid4().hex}", 400, "nested deeper"),
        "long-id": (event({}), "msg_" + "a" * 3000, 400, "svix-id"),
        "odd-id": (event({}), "msg/../id", 400, "svix-id"),
        "not-utf8": (b'{"type":"user.created","data":{"x":"\xff"}}', f"msg_{uuid.uuid4().hex}", 400, "UTF-8"),
        "nul": (event({"first_name": "a\x00"}), f"msg_{uuid.uuid4().hex}", 400, "cannot store"),
        "nan": (b'{"type":"user.created","data":{"x":NaN}}', f"msg_{uuid.uuid4().hex}", 400, "not JSON"),
    }
    for case, (body, msg_id, status, words) in cases.items():
        response = httpx.post(
            f"{receiver.url}/webhooks/clerk",
            content=body,
            headers=sign(receiver.secret, msg_id, body),
            timeout=30,
        )
        assert response.status_code == status, (case, response.text)
        assert words in response.json()["error"], (case, response.text)
    assert inbox_ids(engine) == set()
