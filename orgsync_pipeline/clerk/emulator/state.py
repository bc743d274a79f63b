"""The emulator's Clerk state: tables of organizations, users and memberships, the clock and the ids.

State is held in dicts in creation order; because the emulator clock is strictly increasing, creation order is
``created_at`` order, so ``order_by=created_at`` listings never sort. ``_lock`` (re-entrant) guards the
state; the mutators live in ``mutations``, the API views in ``routes``.
"""

import random
import string
import threading
import time
from typing import Any

from orgsync_pipeline.clerk.emulator.tokens import SessionTokenMinter

_BASE62 = string.digits + string.ascii_letters
# Maps each random byte to a base62 character (slightly biased; ids only need to be unique-looking).
_ID_ALPHABET = bytes(ord(_BASE62[i % 62]) for i in range(256))

Json = dict[str, Any]


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


def _clone(value: Json) -> Json:
    """Deep copy of a JSON object (much faster than copy.deepcopy)."""
    return {k: _clone_value(v) for k, v in value.items()}


def _clone_value(value: Any) -> Any:
    if isinstance(value, dict):
        return _clone(value)
    if isinstance(value, list):
        return [_clone_value(v) for v in value]
    return value


def _role_name(role: str) -> str:
    key = role.split(":", 1)[1] if ":" in role else role
    return key.replace("_", " ").title()


def _primary_email(user: Json) -> str | None:
    primary = user["primary_email_address_id"]
    for address in user["email_addresses"]:
        if address["id"] == primary:
            return str(address["email_address"])
    return None


class EmulatorState:
    """The state and its read access: ``{id: object}`` snapshots, point lookups and the API rendering."""

    def _init_state(self, id_seed: int | None) -> None:
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

    # ------------------------------------------------------------------ lookups (the caller holds _lock)

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

    def _require_user(self, user_id: str) -> Json:
        user = self._users.rows.get(user_id)
        if user is None:
            raise KeyError(f"no user {user_id!r}")
        return user

    def _require_membership(self, org_id: str, user_id: str) -> Json:
        mem_id = self._pairs.get((org_id, user_id))
        if mem_id is None:
            raise KeyError(f"user {user_id!r} is not a member of organization {org_id!r}")
        return self._memberships.rows[mem_id]

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
