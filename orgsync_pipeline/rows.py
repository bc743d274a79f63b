"""Validated records in the shape the apply layer writes them.

Timestamps stay Clerk's integer milliseconds until Postgres converts them, so the comparison
that decides "newer wins" is exact.
"""

from enum import StrEnum
from typing import Any, NamedTuple


class Entity(StrEnum):
    """A kind of synced record, as ``sync_quarantine.entity`` names it."""

    ORGANIZATION = "organization"
    PROFILE = "profile"
    MEMBERSHIP = "membership"


class OrganizationRow(NamedTuple):
    id: str
    name: str
    slug: str | None
    image_url: str | None
    public_metadata: str  # JSON text
    created_at: int
    updated_at: int


class ProfileRow(NamedTuple):
    id: str
    email: str | None
    first_name: str | None
    last_name: str | None
    image_url: str | None
    created_at: int | None  # None for a stub built from a membership's public_user_data
    updated_at: int | None


class MembershipRow(NamedTuple):
    id: str
    organization_id: str
    user_id: str
    role: str  # the app's org_role
    clerk_role: str  # Clerk's role key, e.g. org:admin
    created_at: int
    updated_at: int


class MembershipKey(NamedTuple):
    organization_id: str
    user_id: str
    clerk_membership_id: str | None = None


class QuarantinedRecord(NamedTuple):
    entity: Entity
    clerk_id: str | None
    reason: str
    payload: Any  # the record as received, JSON-serialisable
