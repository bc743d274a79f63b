"""An in-process emulator of the Clerk Backend API (read side), for the demo, the tests and the benchmarks.

It serves the real response shapes of ``GET /v1/organizations``, ``/organization_memberships``, ``/users``
and their point lookups over loopback HTTP (stdlib ``ThreadingHTTPServer`` in a daemon thread), and lets the
caller mutate state through Python methods that follow Clerk's semantics (unique slugs, unique
(organization, user) memberships, cascading deletes, millisecond timestamps). Faults (429/5xx/slow
answers), a sliding-window rate limiter and request hooks let tests provoke the failures a sync must survive.

With a webhook endpoint registered (``add_webhook_endpoint``) it also acts as Clerk's webhook sender: every
mutation emits Clerk's event, which a background thread POSTs with Svix signatures and Svix-like retries.

State is held in dicts in creation order; because the emulator clock is strictly increasing, creation order is
``created_at`` order, so ``order_by=created_at`` listings never sort.
"""

import contextlib
import functools
import hmac
import json
import os
import random
import re
import secrets
import socket
import string
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import httpx

from orgsync_pipeline.clerk.emulator_tokens import DEFAULT_AUTHORIZED_PARTY, SessionTokenMinter

DEFAULT_SECRET_KEY = "sk_test_orgsync_emulator"

API_PREFIX = "/v1"
MAX_LIMIT = 500
DEFAULT_LIMIT = 10

_BASE62 = string.digits + string.ascii_letters
# Maps each random byte to a base62 character (slightly biased; ids only need to be unique-looking).
_ID_ALPHABET = bytes(ord(_BASE62[i % 62]) for i in range(256))
_SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
_API_VERSION_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_DEFAULT_ORG_IMAGE = "https://img.clerk.com/eyJ0eXBlIjoiZGVmYXVsdCIsImlpZCI6Im9yZyJ9"
_DEFAULT_USER_IMAGE = "https://img.clerk.com/eyJ0eXBlIjoiZGVmYXVsdCIsImlpZCI6InVzZXIifQ"

_ORG_FIELDS = frozenset(
    {"name", "slug", "public_metadata", "private_metadata", "image_url", "max_allowed_memberships",
     "admin_delete_enabled"}
)  # fmt: skip
_USER_FIELDS = frozenset(
    {"first_name", "last_name", "email", "username", "image_url", "public_metadata", "private_metadata",
     "unsafe_metadata", "external_id", "banned", "locked", "last_sign_in_at", "last_active_at"}
)  # fmt: skip

DEFAULT_RETRY_DELAYS = (0.0, 0.5, 1.0, 2.0, 5.0)
WEBHOOK_TIMEOUT_SECONDS = 10.0
_WEBHOOK_USER_AGENT = "Svix-Webhooks/1.0 (orgsync Clerk emulator)"

Json = dict[str, Any]
RequestHook = Callable[[str, str, dict[str, str]], None]


def _new_msg_id() -> str:
    return "msg_" + os.urandom(27).translate(_ID_ALPHABET).decode()


@functools.lru_cache(maxsize=16)
def _signer(secret: str) -> Any:
    from svix.webhooks import Webhook  # imported lazily: the svix package takes ~0.6 s to import

    return Webhook(secret)


def svix_headers(
    secret: str, body: bytes, *, msg_id: str | None = None, timestamp: int | None = None
) -> dict[str, str]:
    """The ``svix-id``/``svix-timestamp``/``svix-signature`` headers Svix sends with ``body``.

    ``secret`` is the endpoint's ``whsec_<base64>`` signing secret; the signature covers the exact bytes of
    ``body`` (UTF-8). ``msg_id`` defaults to a fresh ``msg_…`` id, ``timestamp`` (seconds) to now."""
    msg_id = msg_id or _new_msg_id()
    ts = int(time.time()) if timestamp is None else int(timestamp)
    signature = _signer(secret).sign(msg_id, datetime.fromtimestamp(ts, tz=UTC), body.decode())
    return {"svix-id": msg_id, "svix-timestamp": str(ts), "svix-signature": signature}


@dataclass(frozen=True)
class RequestRecord:
    """One request the emulator answered.

    ``path`` is relative to ``/v1`` (e.g. ``"/organizations"``; a path outside ``/v1`` is kept whole) and
    ``query`` maps each parameter to all its values, in order.
    """

    method: str
    path: str
    query: dict[str, list[str]]
    status: int
    api_version: str | None
    has_authorization: bool
    user_agent: str | None
    at: float = field(default_factory=time.time)

    def param(self, name: str) -> str | None:
        """First value of query parameter ``name``, or None."""
        values = self.query.get(name)
        return values[0] if values else None


@dataclass(frozen=True)
class DeliveryRecord:
    """One webhook delivery attempt.

    ``status_code`` is the endpoint's answer (None when it never answered: ``error`` then says why, e.g. a
    refused connection or a timeout); ``at`` is when the POST was sent (``time.time()``), ``elapsed`` how
    long the attempt took (seconds) and ``url`` the endpoint it went to."""

    msg_id: str
    event_type: str
    attempt: int
    status_code: int | None
    error: str | None
    at: float
    url: str = ""
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        """The endpoint answered 2xx."""
        return self.status_code is not None and 200 <= self.status_code < 300


@dataclass(frozen=True)
class _WebhookEndpoint:
    url: str
    secret: str
    retry_delays: tuple[float, ...]
    timeout: float


@dataclass(frozen=True)
class _Outgoing:
    msg_id: str
    event_type: str
    body: bytes


@dataclass
class _Fault:
    path: str
    status: int
    remaining: int  # -1 = forever
    retry_after: int | None
    query: dict[str, str]
    delay_seconds: float

    def matches(self, path: str, query: dict[str, list[str]]) -> bool:
        if self.remaining == 0 or path != self.path:
            return False
        return all(value in query.get(key, ()) for key, value in self.query.items())


class _ApiError(Exception):
    """An error answer in Clerk's ``ClerkErrors`` shape."""

    def __init__(
        self, status: int, code: str, message: str, long_message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(f"{status} {code}")
        self.status = status
        self.code = code
        self.message = message
        self.long_message = long_message
        self.headers = headers or {}


class _Table:
    """Rows keyed by id, remembering creation (== created_at) order without re-sorting."""

    def __init__(self) -> None:
        self.rows: dict[str, Json] = {}
        self._order: list[str] | None = []
        self.version = 0  # bumped on every change; keys the sort caches

    def add(self, row: Json) -> None:
        self.rows[row["id"]] = row
        if self._order is not None:
            self._order.append(row["id"])
        self.version += 1

    def remove(self, row_id: str) -> Json:
        row = self.rows.pop(row_id)
        self._order = None  # rebuilt lazily: deletions are rarer than page reads
        self.version += 1
        return row

    def touch(self) -> None:
        self.version += 1

    def ordered_ids(self) -> list[str]:
        if self._order is None:
            self._order = list(self.rows)
        return self._order


def _page(ids: Sequence[str], offset: int, limit: int, descending: bool) -> Sequence[str]:
    if not descending:
        return ids[offset : offset + limit]
    end = len(ids) - offset
    if end <= 0:
        return []
    return ids[max(0, end - limit) : end][::-1]


def _clone(value: Any) -> Any:
    """Deep copy of a JSON value (much faster than copy.deepcopy)."""
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return value


def _slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "org"


def _role_name(role: str) -> str:
    key = role.split(":", 1)[1] if ":" in role else role
    return key.replace("_", " ").title()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    emulator: "ClerkEmulator"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a 2000-page crawl should not open 2000 connections
    disable_nagle_algorithm = True  # headers and body are separate writes; Nagle would stall each by ~40 ms
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.emulator._track_connection(self.connection, add=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.emulator._track_connection(self.connection, add=False)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: one line per request would drown test and benchmark output

    def _serve(self) -> None:
        self.server.emulator._serve(self)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


class ClerkEmulator:
    """A loopback Clerk Backend API with Python methods to shape its state.

    Read access: ``organizations``, ``users`` and ``memberships`` return ``{id: object}`` snapshots (deep
    copies, creation order) in the shapes the API serves; ``get_organization``, ``get_user`` and
    ``get_membership`` return one object or None. Every mutator returns what Clerk would return.
    """

    def __init__(
        self,
        secret_key: str = DEFAULT_SECRET_KEY,
        *,
        rate_limit: int | None = None,
        rate_window_seconds: float = 10.0,
        id_seed: int | None = None,
        latency_seconds: float = 0.0,
    ) -> None:
        """``rate_limit``: allow at most that many requests per ``rate_window_seconds`` (then 429 with
        ``Retry-After``); None disables the limiter. ``id_seed`` makes generated ids reproducible (the same
        sequence of creations yields the same ids); None draws them at random. ``latency_seconds``: every
        answer waits that long first, like a remote API (benchmarks)."""
        self.secret_key = secret_key
        self.latency_seconds = latency_seconds
        self.rate_limit = rate_limit
        self.rate_window_seconds = rate_window_seconds
        self.requests: list[RequestRecord] = []
        self.errors: list[BaseException] = []  # unexpected exceptions while serving (answered as 500)
        self._lock = threading.RLock()
        self._clock_ms = 0
        self._rng = random.Random(id_seed)
        self.instance_id = self._new_id("ins")
        self.tokens = SessionTokenMinter()  # session tokens and the JWKS that verifies them
        self._orgs = _Table()
        self._users = _Table()
        self._memberships = _Table()
        self._slugs: dict[str, str] = {}  # slug -> org id
        self._slug_counters: dict[str, int] = {}
        self._pairs: dict[tuple[str, str], str] = {}  # (org id, user id) -> membership id
        self._org_members: dict[str, dict[str, None]] = {}  # org id -> membership ids, creation order
        self._user_members: dict[str, dict[str, None]] = {}  # user id -> membership ids, creation order
        self._hidden_users: set[str] = set()
        self._hidden_version = 0
        self._sort_cache: dict[tuple[str, str], tuple[tuple[int, int], list[str]]] = {}
        self._faults: list[_Fault] = []
        self._hooks: list[RequestHook] = []
        self._rate_times: deque[float] = deque()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[socket.socket] = set()
        self._stopping = threading.Event()
        # Webhooks. The queue and delivery records are guarded by _webhook_cond, never by _lock, and the
        # delivery thread never takes _lock: mutations enqueue under _lock, HTTP runs under neither.
        self.webhook_events: list[Json] = []  # every envelope emitted, in order
        self.deliveries: list[DeliveryRecord] = []  # one per attempt
        # The last attempt of each event that ran out of retries (per endpoint).
        self.failed_deliveries: list[DeliveryRecord] = []
        self._webhook_endpoints: list[_WebhookEndpoint] = []
        self._webhook_cond = threading.Condition(threading.Lock())
        self._webhook_queue: deque[_Outgoing] = deque()
        self._webhook_in_flight = 0  # events being attempted right now
        self._webhook_paused = False  # set by stop(), cleared by start()
        self._webhook_thread: threading.Thread | None = None
        self._webhook_stop = threading.Event()

    def __repr__(self) -> str:
        url = self._api_url() or "not started"
        return f"ClerkEmulator({url})"

    # ------------------------------------------------------------------ lifecycle

    def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Start serving on a loopback address (port 0 = any free port); returns the API URL (``…/v1``)."""
        if host == "localhost":
            host = "127.0.0.1"
        if not host.startswith("127."):
            raise ValueError(f"the Clerk emulator serves on IPv4 loopback only, not {host!r}")
        if self._server is not None:
            raise RuntimeError("the Clerk emulator is already running")
        self._stopping.clear()
        server = _Server((host, port), _Handler)
        server.emulator = self
        self._server = server
        # A short poll interval keeps stop() fast: shutdown() waits for the loop to notice.
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="clerk-emulator", daemon=True
        )
        self._thread.start()
        with self._webhook_cond:
            self._webhook_paused = False
            self._ensure_delivery_thread()
        return self.api_url

    def stop(self) -> None:
        """Stop serving, drop open connections and stop webhook delivery (undelivered events stay queued and
        go out after ``start``); state is kept, so ``start`` may be called again."""
        self._stop_delivery_thread()
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        with self._lock:
            connections = list(self._connections)
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "ClerkEmulator":
        if self._server is None:
            self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def api_url(self) -> str:
        """Base URL of the running API, e.g. ``http://127.0.0.1:54321/v1``."""
        url = self._api_url()
        if url is None:
            raise RuntimeError("the Clerk emulator is not running; call start() first")
        return url

    def _api_url(self) -> str | None:
        if self._server is None:
            return None
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}{API_PREFIX}"

    def _track_connection(self, conn: socket.socket, *, add: bool) -> None:
        with self._lock:
            if add:
                self._connections.add(conn)
            else:
                self._connections.discard(conn)

    # ------------------------------------------------------------------ clock and ids

    def _tick(self) -> int:
        """Next emulator time in ms: real time, but at least 1 ms after the previous mutation."""
        self._clock_ms = max(int(time.time() * 1000), self._clock_ms + 1)
        return self._clock_ms

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}_{self._rng.randbytes(27).translate(_ID_ALPHABET).decode()}"

    def now_ms(self) -> int:
        """The emulator clock (ms) without advancing it: never earlier than real time."""
        with self._lock:
            return max(int(time.time() * 1000), self._clock_ms)

    # ------------------------------------------------------------------ read access

    @property
    def organizations(self) -> dict[str, Json]:
        """Snapshot of all organizations, ``{id: Organization}``, in creation order."""
        with self._lock:
            return {oid: _clone(org) for oid, org in self._orgs.rows.items()}

    @property
    def users(self) -> dict[str, Json]:
        """Snapshot of all users (hidden ones included), ``{id: User}``, in creation order."""
        with self._lock:
            return {uid: _clone(user) for uid, user in self._users.rows.items()}

    @property
    def memberships(self) -> dict[str, Json]:
        """Snapshot of all memberships, ``{id: OrganizationMembership}``, in creation order."""
        with self._lock:
            return {mid: _clone(self._render_membership(m)) for mid, m in self._memberships.rows.items()}

    def get_organization(self, id_or_slug: str) -> Json | None:
        """One organization by id or slug, or None."""
        with self._lock:
            org = self._find_org(id_or_slug)
            return _clone(org) if org else None

    def get_user(self, user_id: str) -> Json | None:
        """One user by id (hidden or not), or None."""
        with self._lock:
            user = self._users.rows.get(user_id)
            return _clone(user) if user else None

    def get_membership(self, org_id: str, user_id: str) -> Json | None:
        """The membership of ``user_id`` in ``org_id``, or None."""
        with self._lock:
            mem_id = self._pairs.get((org_id, user_id))
            return _clone(self._render_membership(self._memberships.rows[mem_id])) if mem_id else None

    # ------------------------------------------------------------------ organizations

    def create_organization(
        self,
        name: str,
        slug: str | None = None,
        *,
        public_metadata: dict | None = None,
        image_url: str | None = None,
    ) -> Json:
        """Create an organization; the slug defaults to a unique slug derived from the name."""
        with self._lock:
            return _clone(self._add_organization(name, slug, public_metadata, image_url))

    def _add_organization(
        self, name: str, slug: str | None, public_metadata: dict | None, image_url: str | None
    ) -> Json:
        if not name or not name.strip():
            raise ValueError("organization name must not be empty")
        if slug is None:
            slug = self._unique_slug(_slugify(name))
        else:
            self._check_slug(slug, None)
        now = self._tick()
        org: Json = {
            "object": "organization",
            "id": self._new_id("org"),
            "name": name,
            "slug": slug,
            "image_url": image_url or _DEFAULT_ORG_IMAGE,
            "has_image": image_url is not None,
            "max_allowed_memberships": 0,
            "admin_delete_enabled": True,
            "public_metadata": _clone(public_metadata or {}),
            "private_metadata": {},
            "role_set_key": None,
            "created_at": now,
            "updated_at": now,
        }
        self._orgs.add(org)
        self._slugs[slug] = org["id"]
        self._org_members[org["id"]] = {}
        if self._webhook_endpoints:
            self._emit("organization.created", org, now)
        return org

    def update_organization(self, org_id: str, **fields: Any) -> Json:
        """Update fields (name, slug, public_metadata, private_metadata, image_url, max_allowed_memberships,
        admin_delete_enabled); bumps ``updated_at``. Memberships embed the organization, so they follow."""
        unknown = set(fields) - _ORG_FIELDS
        if unknown:
            raise ValueError(f"cannot update organization fields {sorted(unknown)}")
        with self._lock:
            org = self._require_org(org_id)
            if "name" in fields and not (fields["name"] or "").strip():
                raise ValueError("organization name must not be empty")
            if "slug" in fields and fields["slug"] != org["slug"]:
                self._check_slug(fields["slug"], org_id)
                del self._slugs[org["slug"]]
                self._slugs[fields["slug"]] = org_id
            for key, value in fields.items():
                if key == "image_url":
                    org["image_url"] = value or _DEFAULT_ORG_IMAGE
                    org["has_image"] = value is not None
                else:
                    org[key] = _clone(value)
            org["updated_at"] = self._tick()
            self._orgs.touch()
            if self._webhook_endpoints:
                self._emit("organization.updated", org, org["updated_at"])
            return _clone(org)

    def delete_organization(self, org_id: str) -> Json:
        """Delete an organization and (cascade) its memberships; returns Clerk's DeletedObject."""
        with self._lock:
            org = self._require_org(org_id)
            for mem_id in list(self._org_members[org_id]):
                self._remove_membership(mem_id)
            del self._org_members[org_id]
            del self._slugs[org["slug"]]
            self._orgs.remove(org_id)
            now = self._tick()
            deleted: Json = {"object": "organization", "id": org_id, "slug": org["slug"], "deleted": True}
            if self._webhook_endpoints:  # cascaded memberships emit nothing (Clerk documents no such events)
                self._emit("organization.deleted", deleted, now)
            return deleted

    def _unique_slug(self, base: str) -> str:
        if base not in self._slugs:
            return base
        n = self._slug_counters.get(base, 1)
        while True:
            n += 1
            candidate = f"{base}-{n}"
            if candidate not in self._slugs:
                self._slug_counters[base] = n
                return candidate

    def _check_slug(self, slug: str, org_id: str | None) -> None:
        if not isinstance(slug, str) or not _SLUG_RE.match(slug):
            raise ValueError(f"invalid organization slug {slug!r}: use lowercase letters, digits and dashes")
        owner = self._slugs.get(slug)
        if owner is not None and owner != org_id:
            raise ValueError(f"organization slug {slug!r} is already taken")

    def _require_org(self, org_id: str) -> Json:
        org = self._orgs.rows.get(org_id)
        if org is None:
            raise KeyError(f"no organization {org_id!r}")
        return org

    def _find_org(self, id_or_slug: str) -> Json | None:
        org = self._orgs.rows.get(id_or_slug)
        if org is None and id_or_slug in self._slugs:
            org = self._orgs.rows[self._slugs[id_or_slug]]
        return org

    # ------------------------------------------------------------------ users

    def create_user(
        self, first_name: str | None, last_name: str | None, email: str | None, *, username: str | None = None
    ) -> Json:
        """Create a user with a verified primary email address (if ``email`` is given)."""
        with self._lock:
            return _clone(self._add_user(first_name, last_name, email, username))

    def _add_user(
        self, first_name: str | None, last_name: str | None, email: str | None, username: str | None
    ) -> Json:
        now = self._tick()
        user: Json = {
            "object": "user",
            "id": self._new_id("user"),
            "external_id": None,
            "primary_email_address_id": None,
            "primary_phone_number_id": None,
            "primary_web3_wallet_id": None,
            "username": username,
            "first_name": first_name,
            "last_name": last_name,
            "locale": None,
            "image_url": _DEFAULT_USER_IMAGE,
            "profile_image_url": _DEFAULT_USER_IMAGE,
            "has_image": False,
            "public_metadata": {},
            "private_metadata": {},
            "unsafe_metadata": {},
            "email_addresses": [],
            "phone_numbers": [],
            "web3_wallets": [],
            "passkeys": [],
            "external_accounts": [],
            "saml_accounts": [],
            "enterprise_accounts": [],
            "password_enabled": True,
            "two_factor_enabled": False,
            "totp_enabled": False,
            "backup_code_enabled": False,
            "mfa_enabled_at": None,
            "mfa_disabled_at": None,
            "last_sign_in_at": None,
            "banned": False,
            "locked": False,
            "lockout_expires_in_seconds": None,
            "verification_attempts_remaining": None,
            "delete_self_enabled": True,
            "create_organization_enabled": True,
            "create_organizations_limit": None,
            "last_active_at": None,
            "legal_accepted_at": None,
            "created_at": now,
            "updated_at": now,
        }
        if email is not None:
            self._set_primary_email(user, email, now)
        self._users.add(user)
        self._user_members[user["id"]] = {}
        if self._webhook_endpoints:
            self._emit("user.created", user, now)
        return user

    def update_user(self, user_id: str, **fields: Any) -> Json:
        """Update fields (first_name, last_name, email, username, image_url, *_metadata, external_id, banned,
        locked, last_sign_in_at, last_active_at); ``email`` becomes the primary email address (None removes
        them all). Bumps ``updated_at``."""
        unknown = set(fields) - _USER_FIELDS
        if unknown:
            raise ValueError(f"cannot update user fields {sorted(unknown)}")
        with self._lock:
            user = self._require_user(user_id)
            now = self._tick()
            for key, value in fields.items():
                if key == "email":
                    if value is None:
                        user["email_addresses"] = []
                        user["primary_email_address_id"] = None
                    else:
                        self._set_primary_email(user, value, now)
                elif key == "image_url":
                    user["image_url"] = user["profile_image_url"] = value or _DEFAULT_USER_IMAGE
                    user["has_image"] = value is not None
                else:
                    user[key] = _clone(value)
            user["updated_at"] = now
            self._users.touch()
            if self._webhook_endpoints:
                self._emit("user.updated", user, now)
            return _clone(user)

    def delete_user(self, user_id: str) -> Json:
        """Delete a user and (cascade) their memberships; returns Clerk's DeletedObject."""
        with self._lock:
            user = self._require_user(user_id)
            for mem_id in list(self._user_members[user_id]):
                self._remove_membership(mem_id)
            del self._user_members[user_id]
            self._users.remove(user_id)
            if user_id in self._hidden_users:
                self._hidden_users.discard(user_id)
                self._hidden_version += 1
            now = self._tick()
            deleted: Json = {"object": "user", "id": user_id, "deleted": True}
            if user["external_id"] is not None:
                deleted["external_id"] = user["external_id"]
            if self._webhook_endpoints:  # cascaded memberships emit nothing (Clerk documents no such events)
                self._emit("user.deleted", deleted, now)
            return deleted

    def hide_user_from_listing(self, user_id: str) -> None:
        """Leave the user out of ``GET /users`` and ``/users/count`` (point lookups still find it)."""
        with self._lock:
            self._require_user(user_id)
            self._hidden_users.add(user_id)
            self._hidden_version += 1

    def _set_primary_email(self, user: Json, email: str, now: int) -> None:
        for address in user["email_addresses"]:
            if address["email_address"] == email:
                user["primary_email_address_id"] = address["id"]
                return
        address = {
            "id": self._new_id("idn"),
            "object": "email_address",
            "email_address": email,
            "reserved": False,
            "verification": {
                "object": "verification_otp",
                "status": "verified",
                "strategy": "email_code",
                "attempts": 1,
                "expire_at": now + 600_000,
            },
            "linked_to": [],
            "created_at": now,
            "updated_at": now,
        }
        user["email_addresses"].append(address)
        user["primary_email_address_id"] = address["id"]

    def _require_user(self, user_id: str) -> Json:
        user = self._users.rows.get(user_id)
        if user is None:
            raise KeyError(f"no user {user_id!r}")
        return user

    # ------------------------------------------------------------------ memberships

    def create_membership(self, org_id: str, user_id: str, role: str = "org:member") -> Json:
        """Add ``user_id`` to ``org_id``; a second membership for the same pair raises ValueError."""
        with self._lock:
            return _clone(self._render_membership(self._add_membership(org_id, user_id, role)))

    def _add_membership(self, org_id: str, user_id: str, role: str) -> Json:
        self._require_org(org_id)
        self._require_user(user_id)
        if (org_id, user_id) in self._pairs:
            raise ValueError(f"user {user_id} is already a member of organization {org_id}")
        now = self._tick()
        mem: Json = {
            "id": self._new_id("orgmem"),
            "org_id": org_id,
            "user_id": user_id,
            "role": role,
            "public_metadata": {},
            "private_metadata": {},
            "created_at": now,
            "updated_at": now,
        }
        self._memberships.add(mem)
        self._pairs[(org_id, user_id)] = mem["id"]
        self._org_members[org_id][mem["id"]] = None
        self._user_members[user_id][mem["id"]] = None
        if self._webhook_endpoints:
            self._emit("organizationMembership.created", self._render_membership(mem), now)
        return mem

    def update_membership(self, org_id: str, user_id: str, *, role: str) -> Json:
        """Change a member's role; bumps the membership's ``updated_at``."""
        with self._lock:
            mem = self._require_membership(org_id, user_id)
            mem["role"] = role
            mem["updated_at"] = self._tick()
            self._memberships.touch()
            if self._webhook_endpoints:
                self._emit("organizationMembership.updated", self._render_membership(mem), mem["updated_at"])
            return _clone(self._render_membership(mem))

    def delete_membership(self, org_id: str, user_id: str) -> Json:
        """Remove a member; returns the full OrganizationMembership, as Clerk does."""
        with self._lock:
            mem = self._require_membership(org_id, user_id)
            rendered = _clone(self._render_membership(mem))
            self._remove_membership(mem["id"])
            now = self._tick()
            if self._webhook_endpoints:
                self._emit("organizationMembership.deleted", rendered, now)
            return rendered

    def _require_membership(self, org_id: str, user_id: str) -> Json:
        mem_id = self._pairs.get((org_id, user_id))
        if mem_id is None:
            raise KeyError(f"user {user_id!r} is not a member of organization {org_id!r}")
        return self._memberships.rows[mem_id]

    def _remove_membership(self, mem_id: str) -> None:
        mem = self._memberships.remove(mem_id)
        del self._pairs[(mem["org_id"], mem["user_id"])]
        del self._org_members[mem["org_id"]][mem_id]
        del self._user_members[mem["user_id"]][mem_id]

    def _render_membership(self, mem: Json) -> Json:
        """The API shape; shares sub-objects with internal state, so clone before handing it out."""
        user = self._users.rows[mem["user_id"]]
        return {
            "object": "organization_membership",
            "id": mem["id"],
            "role": mem["role"],
            "role_name": _role_name(mem["role"]),
            "permissions": [],
            "public_metadata": mem["public_metadata"],
            "private_metadata": mem["private_metadata"],
            "organization": self._orgs.rows[mem["org_id"]],
            "public_user_data": {
                "user_id": user["id"],
                "first_name": user["first_name"],
                "last_name": user["last_name"],
                "image_url": user["image_url"],
                "profile_image_url": user["profile_image_url"],
                "has_image": user["has_image"],
                "identifier": _primary_email(user) or user["username"],
                "username": user["username"],
            },
            "created_at": mem["created_at"],
            "updated_at": mem["updated_at"],
        }

    # ------------------------------------------------------------------ sample data

    def seed_sample(
        self, *, organizations: int = 5, users: int = 12, memberships_per_org: int = 3, seed: int = 7
    ) -> None:
        """Add deterministic, realistic sample data: each organization gets ``memberships_per_org`` distinct
        members (one ``org:admin``, the rest ``org:member``). Names, slugs, emails and roles depend only on
        ``seed``; ids too when the emulator was built with ``id_seed``; timestamps never."""
        rng = random.Random(seed)
        with self._lock:
            emails = {_primary_email(u) for u in self._users.rows.values()}
            seen: dict[tuple[str, str], int] = {}  # (first, last) -> how many so far, to number duplicates
            user_ids: list[str] = []
            for _ in range(users):
                first, last = rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES)
                domain = rng.choice(_EMAIL_DOMAINS)
                n = seen.get((first, last), 0)
                while True:
                    n += 1
                    email = f"{first}.{last}{n if n > 1 else ''}@{domain}".lower()
                    if email not in emails:
                        break
                seen[(first, last)] = n
                emails.add(email)
                username = f"{first[0]}{last}{n if n > 1 else ''}".lower() if rng.random() < 0.3 else None
                user_ids.append(self._add_user(first, last, email, username)["id"])
            org_ids: list[str] = []
            for _ in range(organizations):
                name = f"{rng.choice(_ORG_WORDS)} {rng.choice(_ORG_SUFFIXES)}"
                org_ids.append(self._add_organization(name, None, None, None)["id"])
            per_org = min(memberships_per_org, len(user_ids))
            for org_id in org_ids:
                for i, user_id in enumerate(rng.sample(user_ids, per_org)):
                    self._add_membership(org_id, user_id, "org:admin" if i == 0 else "org:member")

    # ------------------------------------------------------------------ faults, hooks, webhooks

    def inject_fault(
        self,
        path: str,
        status: int,
        *,
        times: int = 1,
        retry_after: int | None = None,
        query: dict[str, str] | None = None,
        delay_seconds: float = 0.0,
    ) -> None:
        """Answer the next ``times`` requests (-1: all) for ``path`` (relative to /v1) whose query holds all
        of ``query`` with ``status`` and a Clerk error body, after sleeping ``delay_seconds``. A status below
        400 only delays: the request is then served normally. Faults apply after authentication."""
        if times == 0 or times < -1:
            raise ValueError("times must be positive, or -1 for forever")
        with self._lock:
            self._faults.append(_Fault(path, status, times, retry_after, dict(query or {}), delay_seconds))

    def clear_faults(self) -> None:
        """Drop all pending faults."""
        with self._lock:
            self._faults.clear()

    def add_request_hook(self, hook: RequestHook) -> None:
        """Call ``hook(method, path, query)`` (path relative to /v1, first value per parameter) before each
        authorized request is served; it may mutate the emulator's state."""
        with self._lock:
            self._hooks.append(hook)

    def session_token(
        self,
        user_id: str,
        org_id: str | None = None,
        *,
        version: int = 2,
        azp: str | None = DEFAULT_AUTHORIZED_PARTY,
        expires_in: int = 60,
        issued_at: int | None = None,
        kid: str | None = None,
    ) -> str:
        """A Clerk session token (RS256, verifiable with ``GET /v1/jwks``) for ``user_id`` with ``org_id`` as
        the active organization, in claim shape ``version`` 2 (``o.id``) or 1 (``org_id``). The org's slug and
        the user's role come from the emulator's state when it has them."""
        org = None
        if org_id is not None:
            with self._lock:
                found = self._orgs.rows.get(org_id)
                mem_id = self._pairs.get((org_id, user_id))
                role = self._memberships.rows[mem_id]["role"] if mem_id else "org:member"
            org = {"id": org_id, "slug": found.get("slug") if found else None, "role": role}
        return self.tokens.mint(
            user_id, org=org, version=version, azp=azp, expires_in=expires_in, issued_at=issued_at, kid=kid
        )

    def event_envelope(self, event_type: str, data: Json, *, timestamp_ms: int | None = None) -> Json:
        """Wrap ``data`` in Clerk's webhook event envelope; ``timestamp`` in ms (default: emulator clock)."""
        return {
            "object": "event",
            "type": event_type,
            "timestamp": timestamp_ms if timestamp_ms is not None else self.now_ms(),
            "instance_id": self.instance_id,
            "event_attributes": {
                "http_request": {"client_ip": "127.0.0.1", "user_agent": "orgsync-emulator"}
            },
            "data": _clone(data),
        }

    def add_webhook_endpoint(
        self,
        url: str,
        secret: str,
        *,
        retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
        timeout: float = WEBHOOK_TIMEOUT_SECONDS,
    ) -> None:
        """Act as Clerk's webhook sender towards ``url``, signing with ``secret`` (``whsec_<base64>``).

        From now on every mutation emits Clerk's event for it (``organization.*``, ``user.*``,
        ``organizationMembership.*``; cascaded membership deletions emit nothing), enveloped by
        ``event_envelope`` with the mutation's time. One background thread POSTs the events in order, each
        with a new ``svix-id``; a non-2xx answer, a connection error or a ``timeout`` (seconds) is retried
        after each of ``retry_delays`` in turn (same ``svix-id``, fresh timestamp and signature), so an event
        gets ``1 + len(retry_delays)`` attempts before it lands in ``failed_deliveries`` and the thread moves
        on. With several endpoints, each event goes to each of them in turn."""
        _signer(secret)  # fail here on an empty or malformed secret, not in the delivery thread
        delays = tuple(float(d) for d in retry_delays)
        if any(d < 0 for d in delays) or timeout <= 0:
            raise ValueError("retry delays must not be negative and the timeout must be positive")
        endpoint = _WebhookEndpoint(url, secret, delays, float(timeout))
        with self._lock:
            # Copy on write: the delivery thread reads the list without taking _lock.
            self._webhook_endpoints = [*self._webhook_endpoints, endpoint]

    def send_event(self, event_type: str, data: Json, *, timestamp_ms: int | None = None) -> str:
        """Queue an arbitrary event (one the emulator would not emit, a replay of an old payload, …) through
        the same delivery path as mutation events; returns its ``svix-id``."""
        with self._lock:
            if not self._webhook_endpoints:
                raise RuntimeError("no webhook endpoint registered; call add_webhook_endpoint() first")
            return self._emit(event_type, data, self.now_ms() if timestamp_ms is None else timestamp_ms)

    def wait_for_deliveries(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event was delivered or given up on; False if ``timeout`` ran out first."""
        with self._webhook_cond:
            return self._webhook_cond.wait_for(
                lambda: not self._webhook_queue and self._webhook_in_flight == 0, timeout
            )

    def _emit(self, event_type: str, data: Json, timestamp_ms: int) -> str:
        """Envelope, serialise and queue one event; the caller holds _lock (so the queue keeps mutation order)
        and has checked that an endpoint exists."""
        envelope = self.event_envelope(event_type, data, timestamp_ms=timestamp_ms)
        body = json.dumps(envelope, separators=(",", ":"), ensure_ascii=False).encode()
        outgoing = _Outgoing(_new_msg_id(), event_type, body)
        self.webhook_events.append(envelope)
        with self._webhook_cond:
            self._webhook_queue.append(outgoing)
            self._ensure_delivery_thread()
            self._webhook_cond.notify_all()
        return outgoing.msg_id

    def _ensure_delivery_thread(self) -> None:
        """Start the delivery thread unless it runs or delivery is paused; the caller holds _webhook_cond."""
        if self._webhook_paused or not self._webhook_endpoints:
            return
        thread = self._webhook_thread
        if thread is not None and thread.is_alive() and not self._webhook_stop.is_set():
            return
        stop = threading.Event()
        self._webhook_stop = stop
        self._webhook_thread = threading.Thread(
            target=self._delivery_loop, args=(stop,), name="clerk-emulator-webhooks", daemon=True
        )
        self._webhook_thread.start()

    def _stop_delivery_thread(self) -> None:
        """Pause delivery and wait for the thread; an attempt in flight may take up to its timeout."""
        with self._webhook_cond:
            self._webhook_paused = True
            thread, self._webhook_thread = self._webhook_thread, None
            self._webhook_stop.set()
            self._webhook_cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            longest = max((e.timeout for e in self._webhook_endpoints), default=0.0)
            thread.join(timeout=longest + 1.0)

    def _delivery_loop(self, stop: threading.Event) -> None:
        """Deliver queued events in order until ``stop``; the event at the head stays queued until done, so a
        stop mid-event leaves it to be delivered again (same ``svix-id``) after a restart."""
        with httpx.Client(headers={"User-Agent": _WEBHOOK_USER_AGENT}, follow_redirects=False) as client:
            while True:
                with self._webhook_cond:
                    while not stop.is_set() and not self._webhook_queue:
                        self._webhook_cond.wait()
                    if stop.is_set():
                        return
                    item = self._webhook_queue[0]
                    self._webhook_in_flight += 1
                done = False
                try:
                    done = all(
                        [self._deliver(client, item, endpoint, stop) for endpoint in self._webhook_endpoints]
                    )
                finally:
                    with self._webhook_cond:
                        self._webhook_in_flight -= 1
                        if done and self._webhook_queue and self._webhook_queue[0] is item:
                            self._webhook_queue.popleft()
                        self._webhook_cond.notify_all()

    def _deliver(
        self, client: httpx.Client, item: _Outgoing, endpoint: _WebhookEndpoint, stop: threading.Event
    ) -> bool:
        """Attempt one event on one endpoint until it succeeds or runs out of retries (True), or until
        ``stop`` interrupts the retries (False)."""
        delays = endpoint.retry_delays
        attempt = 0
        while True:
            if stop.is_set():
                return False
            attempt += 1
            headers = {"Content-Type": "application/json"}
            headers.update(svix_headers(endpoint.secret, item.body, msg_id=item.msg_id))
            status: int | None = None
            error: str | None = None
            sent_at, started = time.time(), time.perf_counter()
            try:
                response = client.post(
                    endpoint.url, content=item.body, headers=headers, timeout=endpoint.timeout
                )
                status = response.status_code
            except Exception as exc:  # refused, reset, timed out, malformed answer: all count as no answer
                error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            record = DeliveryRecord(
                item.msg_id, item.event_type, attempt, status, error, sent_at, endpoint.url,
                time.perf_counter() - started,
            )  # fmt: skip
            with self._webhook_cond:
                self.deliveries.append(record)
                if not record.ok and attempt > len(delays):
                    self.failed_deliveries.append(record)
            if record.ok or attempt > len(delays):
                return True
            if stop.wait(delays[attempt - 1]):
                return False

    # ------------------------------------------------------------------ HTTP

    def _serve(self, handler: _Handler) -> None:
        method = handler.command
        url = urlsplit(handler.path)
        query = parse_qs(url.query, keep_blank_values=True)
        length = int(handler.headers.get("Content-Length") or 0)
        if length:
            handler.rfile.read(length)
        raw_path = url.path
        if raw_path == API_PREFIX or raw_path.startswith(API_PREFIX + "/"):
            path = raw_path[len(API_PREFIX) :] or "/"
        else:
            path = raw_path
        headers: dict[str, str] = {}
        try:
            body: Any = self._answer(method, raw_path, path, query, handler)
            status = 200
        except _ApiError as err:
            status, body = err.status, self._error_body(err)
            headers.update(err.headers)
        except Exception as exc:  # a bug or a failing hook: answer like Clerk would, keep it for the test
            self.errors.append(exc)
            status = 500
            body = self._error_body(_ApiError(500, "internal_clerk_error", "Oops!", "Internal error"))
        record = RequestRecord(
            method=method,
            path=path,
            query=query,
            status=status,
            api_version=handler.headers.get("Clerk-API-Version"),
            has_authorization=handler.headers.get("Authorization") is not None,
            user_agent=handler.headers.get("User-Agent"),
        )
        with self._lock:
            self.requests.append(record)
        payload = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(payload)))
            for name, value in headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(payload)
        except OSError:  # the client gave up (e.g. a read timeout during a delay fault)
            handler.close_connection = True

    def _answer(
        self,
        method: str,
        raw_path: str,
        path: str,
        query: dict[str, list[str]],
        handler: _Handler,
    ) -> bytes:
        """The serialised 200 body, or an _ApiError for every Clerk error answer."""
        if self.latency_seconds > 0:  # outside _lock: concurrent requests wait in parallel, as over a network
            self._stopping.wait(self.latency_seconds)
        self._authenticate(handler.headers.get("Authorization"))
        self._check_api_version(handler.headers.get("Clerk-API-Version"), query)
        self._check_rate_limit()
        fault = self._take_fault(path, query)
        if fault is not None:
            if fault.delay_seconds > 0:
                self._stopping.wait(fault.delay_seconds)
            if fault.status >= 400:
                raise self._fault_error(fault)
        simple_query = {key: values[0] for key, values in query.items()}
        for hook in list(self._hooks):
            hook(method, path, simple_query)
        if not raw_path.startswith(API_PREFIX + "/") or method != "GET":
            raise _not_found("Page not found")
        segments = [unquote(s) for s in path.strip("/").split("/")]
        with self._lock:
            body = self._route(segments, query)
            # Serialise under the lock: rendered objects share dicts with live state.
            return json.dumps(body, separators=(",", ":")).encode()

    def _route(self, segments: list[str], query: dict[str, list[str]]) -> Any:
        match segments:
            case ["organizations"]:
                return self._list_organizations(query)
            case ["organizations", org_ref]:
                org = self._find_org(org_ref)
                if org is None:
                    raise _not_found("Given organization not found.")
                return self._org_out(org, _flag(query, "include_members_count"))
            case ["organizations", org_ref, "memberships"]:
                org = self._find_org(org_ref)
                if org is None:
                    raise _not_found("Given organization not found.")
                ids: Sequence[str] = list(self._org_members[org["id"]])
                wanted = _values(query, "user_id")
                if wanted:
                    wanted_set = set(wanted)
                    ids = [i for i in ids if self._memberships.rows[i]["user_id"] in wanted_set]
                return self._membership_page(ids, query)
            case ["organization_memberships"]:
                return self._membership_page(self._memberships.ordered_ids(), query)
            case ["users"]:
                return self._list_users(query)
            case ["users", "count"]:
                return {"object": "total_count", "total_count": len(self._listed_user_ids(query))}
            case ["users", user_id]:
                user = self._users.rows.get(user_id)
                if user is None:
                    raise _not_found("Given user not found.")
                return user
            case ["jwks"]:
                return self.tokens.jwks()
            case ["users", user_id, "organization_memberships"]:
                if user_id not in self._users.rows:
                    raise _not_found("Given user not found.")
                return self._membership_page(list(self._user_members[user_id]), query)
        raise _not_found("Page not found")

    def _list_organizations(self, query: dict[str, list[str]]) -> Json:
        limit, offset = _limit_offset(query)
        field_name, descending = _order_by(query, {"created_at", "name"}, default="-created_at")
        ids = self._orgs.ordered_ids()
        if field_name != "created_at":
            ids = self._sorted_ids("orgs", self._orgs, field_name, (self._orgs.version, 0))
        with_count = _flag(query, "include_members_count")
        page = _page(ids, offset, limit, descending)
        return {
            "data": [self._org_out(self._orgs.rows[i], with_count) for i in page],
            "total_count": len(ids),
        }

    def _org_out(self, org: Json, with_members_count: bool) -> Json:
        if not with_members_count:
            return org
        return {**org, "members_count": len(self._org_members[org["id"]])}

    def _membership_page(self, ids: Sequence[str], query: dict[str, list[str]]) -> Json:
        limit, offset = _limit_offset(query)
        _, descending = _order_by(query, {"created_at"}, default="+created_at")
        page = _page(ids, offset, limit, descending)
        rows = self._memberships.rows
        return {"data": [self._render_membership(rows[i]) for i in page], "total_count": len(ids)}

    def _list_users(self, query: dict[str, list[str]]) -> list[Json]:
        limit, offset = _limit_offset(query)
        field_name, descending = _order_by(query, {"created_at", "updated_at"}, default="-created_at")
        ids = self._listed_user_ids(query)
        if field_name == "updated_at":
            if _values(query, "user_id"):
                ids = sorted(ids, key=lambda i: self._users.rows[i]["updated_at"])
            else:
                version = (self._users.version, self._hidden_version)
                ids = self._sorted_ids("users", self._users, "updated_at", version, ids)
        return [self._users.rows[i] for i in _page(ids, offset, limit, descending)]

    def _listed_user_ids(self, query: dict[str, list[str]]) -> Sequence[str]:
        """Users a listing shows, in creation order: all but the hidden ones, narrowed by ``user_id``."""
        wanted = _values(query, "user_id")
        rows = self._users.rows
        if wanted:
            picked = {i for i in wanted if i in rows and i not in self._hidden_users}
            return sorted(picked, key=lambda i: rows[i]["created_at"])
        ids = self._users.ordered_ids()
        if not self._hidden_users:
            return ids
        version = (self._users.version, self._hidden_version)
        cached = self._sort_cache.get(("users", "visible"))
        if cached is None or cached[0] != version:
            cached = (version, [i for i in ids if i not in self._hidden_users])
            self._sort_cache[("users", "visible")] = cached
        return cached[1]

    def _sorted_ids(
        self,
        name: str,
        table: _Table,
        field_name: str,
        version: tuple[int, int],
        ids: Sequence[str] | None = None,
    ) -> list[str]:
        cached = self._sort_cache.get((name, field_name))
        if cached is None or cached[0] != version:
            rows = table.rows
            source = table.ordered_ids() if ids is None else ids
            # Stable sort over creation order: ties on the field keep created_at order.
            cached = (version, sorted(source, key=lambda i: rows[i][field_name]))
            self._sort_cache[(name, field_name)] = cached
        return cached[1]

    def _authenticate(self, authorization: str | None) -> None:
        scheme, _, token = (authorization or "").partition(" ")
        if scheme != "Bearer" or not token or " " in token:
            raise _ApiError(
                401,
                "authorization_header_format_invalid",
                "Invalid Authorization header format",
                'Invalid Authorization header format. Must be "Bearer <YOUR_API_KEY>"',
            )
        if not hmac.compare_digest(token.encode(), self.secret_key.encode()):
            raise _ApiError(
                401,
                "clerk_key_invalid",
                "Secret Key invalid",
                "The provided Clerk Secret Key is invalid. Make sure that your Clerk Secret Key is correct.",
            )

    def _check_api_version(self, header: str | None, query: dict[str, list[str]]) -> None:
        in_query = query.get("__clerk_api_version")
        if header is not None and in_query:
            raise _ApiError(
                400,
                "request_header_invalid",
                "Conflicting API versions",
                "Send the API version either in the Clerk-API-Version header or in __clerk_api_version.",
            )
        value = header if header is not None else (in_query[0] if in_query else None)
        if value is not None and not _API_VERSION_RE.match(value.strip()):
            raise _ApiError(
                400,
                "request_header_invalid",
                "Invalid API version",
                f"{value!r} is not an API version (YYYY-MM-DD).",
            )

    def _check_rate_limit(self) -> None:
        if self.rate_limit is None:
            return
        with self._lock:
            now = time.monotonic()
            while self._rate_times and self._rate_times[0] <= now - self.rate_window_seconds:
                self._rate_times.popleft()
            if len(self._rate_times) >= self.rate_limit:
                wait = self._rate_times[0] + self.rate_window_seconds - now
                raise _too_many_requests(max(1, int(wait + 0.999)))
            self._rate_times.append(now)

    def _take_fault(self, path: str, query: dict[str, list[str]]) -> _Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(path, query):
                    if fault.remaining > 0:
                        fault.remaining -= 1
                    return fault
            return None

    def _fault_error(self, fault: _Fault) -> _ApiError:
        if fault.status == 429:
            return _too_many_requests(fault.retry_after)
        if fault.status >= 500:
            return _ApiError(fault.status, "internal_clerk_error", "Oops!", "There was an internal error.")
        code, message = _FAULT_CODES.get(fault.status, ("unexpected_error", "Injected error"))
        return _ApiError(fault.status, code, message, f"{message} (injected by the Clerk emulator).")

    def _error_body(self, err: _ApiError) -> Json:
        return {
            "errors": [{"message": err.message, "long_message": err.long_message, "code": err.code}],
            "clerk_trace_id": secrets.token_hex(16),
        }


_FAULT_CODES = {
    400: ("request_body_invalid", "Request body invalid"),
    401: ("authentication_invalid", "Unauthorized request"),
    403: ("authorization_invalid", "Unauthorized request"),
    404: ("resource_not_found", "not found"),
    422: ("form_param_value_invalid", "is invalid"),
}


def _not_found(long_message: str) -> _ApiError:
    return _ApiError(404, "resource_not_found", "not found", long_message)


def _too_many_requests(retry_after: int | None) -> _ApiError:
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return _ApiError(429, "too_many_requests", "Too many requests", "Too many requests, retry later", headers)


def _invalid_param(name: str, detail: str) -> _ApiError:
    return _ApiError(422, "form_param_value_invalid", "is invalid", f"{name} {detail}")


def _values(query: dict[str, list[str]], name: str) -> list[str]:
    return query.get(name, []) + query.get(f"{name}[]", [])


def _flag(query: dict[str, list[str]], name: str) -> bool:
    values = query.get(name)
    return bool(values) and values[0].lower() in ("true", "1")


def _int_param(query: dict[str, list[str]], name: str, default: int, low: int, high: int | None) -> int:
    values = query.get(name)
    if not values:
        return default
    try:
        value = int(values[0])
    except ValueError:
        raise _invalid_param(name, "must be an integer") from None
    if value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise _invalid_param(name, f"must be {bounds}")
    return value


def _limit_offset(query: dict[str, list[str]]) -> tuple[int, int]:
    return _int_param(query, "limit", DEFAULT_LIMIT, 1, MAX_LIMIT), _int_param(query, "offset", 0, 0, None)


def _order_by(query: dict[str, list[str]], fields: set[str], default: str) -> tuple[str, bool]:
    values = query.get("order_by")
    value = values[0] if values else default
    descending = value.startswith("-")
    name = value.lstrip("+-")
    if name not in fields:
        raise _invalid_param("order_by", f"must be one of {sorted(fields)} with an optional +/- prefix")
    return name, descending


def _primary_email(user: Json) -> str | None:
    primary = user["primary_email_address_id"]
    for address in user["email_addresses"]:
        if address["id"] == primary:
            return address["email_address"]
    return None


_FIRST_NAMES = (
    "Ada", "Alan", "Amara", "Bea", "Carlos", "Chen", "Dana", "Diego", "Elena", "Emeka", "Farah", "Grace",
    "Hana", "Ivan", "Jamal", "Jane", "Kai", "Lena", "Liam", "Maya", "Mei", "Nadia", "Noah", "Olga", "Omar",
    "Priya", "Quinn", "Rosa", "Sam", "Sofia", "Tariq", "Uma", "Victor", "Wen", "Yara", "Zoe",
)  # fmt: skip
_LAST_NAMES = (
    "Abbott", "Bauer", "Costa", "Diaz", "Eriksen", "Fischer", "Garcia", "Hughes", "Ito", "Johnson", "Kim",
    "Kowalski", "Lopez", "Moreau", "Nakamura", "Novak", "Okafor", "Patel", "Quist", "Rossi", "Schmidt",
    "Silva", "Tanaka", "Umar", "Varga", "Walsh", "Xu", "Yilmaz", "Zhang",
)  # fmt: skip
_EMAIL_DOMAINS = ("example.com", "example.org", "example.net", "mail.example.com")
_ORG_WORDS = (
    "Acme", "Aurora", "Beacon", "Birch", "Cobalt", "Copper", "Delta", "Ember", "Fjord", "Granite", "Harbor",
    "Helix", "Indigo", "Juniper", "Kestrel", "Lumen", "Maple", "Meridian", "Nimbus", "Northwind", "Orchid",
    "Pioneer", "Quartz", "Redwood", "Sierra", "Summit", "Tandem", "Umbra", "Vertex", "Willow", "Zenith",
)  # fmt: skip
_ORG_SUFFIXES = (
    "Analytics", "Labs", "Health", "Logistics", "Partners", "Systems", "Studio", "Group", "Foods", "Energy",
    "Robotics", "Capital", "Media", "Works",
)  # fmt: skip
