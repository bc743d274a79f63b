"""Mutators that follow Clerk's semantics: unique slugs, unique (organization, user) memberships, cascading
deletes, millisecond timestamps. Each one emits Clerk's webhook event when an endpoint is registered."""

import re
from typing import Any

from orgsync_pipeline.clerk.emulator.state import Json, _clone, _clone_value, _Table
from orgsync_pipeline.clerk.emulator.webhooks import WebhookSender

_SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
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


def _set_image(row: Json, url: str | None, default: str, keys: tuple[str, ...] = ("image_url",)) -> None:
    """Set (or with None, unset) an image: Clerk then serves its default image, and ``has_image`` tells
    the two apart."""
    for key in keys:
        row[key] = url or default
    row["has_image"] = url is not None


def _slugify(name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug or "org"


class StateMutations(WebhookSender):
    """Create, update and delete organizations, users and memberships; every mutator returns what Clerk
    would return."""

    # ------------------------------------------------------------------ organizations

    def create_organization(
        self,
        name: str,
        slug: str | None = None,
        *,
        public_metadata: Json | None = None,
        image_url: str | None = None,
    ) -> Json:
        """Create an organization; the slug defaults to a unique slug derived from the name."""
        with self._lock:
            return _clone(self._add_organization(name, slug, public_metadata, image_url))

    def _add_organization(
        self, name: str, slug: str | None, public_metadata: Json | None, image_url: str | None
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
                    _set_image(org, value, _DEFAULT_ORG_IMAGE)
                else:
                    org[key] = _clone_value(value)
            return self._updated(self._orgs, org, "organization.updated", self._tick())

    def delete_organization(self, org_id: str) -> Json:
        """Delete an organization and (cascade) its memberships; returns Clerk's DeletedObject."""
        with self._lock:
            org = self._require_org(org_id)
            self._remove_memberships_of(self._org_members, org_id)
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
                    _set_image(user, value, _DEFAULT_USER_IMAGE, keys=("image_url", "profile_image_url"))
                else:
                    user[key] = _clone_value(value)
            return self._updated(self._users, user, "user.updated", now)

    def delete_user(self, user_id: str) -> Json:
        """Delete a user and (cascade) their memberships; returns Clerk's DeletedObject."""
        with self._lock:
            user = self._require_user(user_id)
            self._remove_memberships_of(self._user_members, user_id)
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

    def _updated(self, table: _Table, row: Json, event_type: str, now: int) -> Json:
        """Finish an update of ``row`` (in ``table``): stamp ``updated_at``, mark the table changed and emit
        ``event_type``; returns a copy, as Clerk answers."""
        row["updated_at"] = now
        table.touch()
        if self._webhook_endpoints:
            self._emit(event_type, row, now)
        return _clone(row)

    def _remove_memberships_of(self, index: dict[str, dict[str, None]], owner_id: str) -> None:
        """Cascade a deletion: remove every membership of ``owner_id`` (an organization or a user, as
        ``index`` is ``_org_members`` or ``_user_members``) and its entry in ``index``."""
        for mem_id in list(index[owner_id]):
            self._remove_membership(mem_id)
        del index[owner_id]

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

    def _remove_membership(self, mem_id: str) -> None:
        mem = self._memberships.remove(mem_id)
        del self._pairs[(mem["org_id"], mem["user_id"])]
        del self._org_members[mem["org_id"]][mem_id]
        del self._user_members[mem["user_id"]][mem_id]
