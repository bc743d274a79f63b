"""SQLAlchemy Core descriptions of the tables the migrations in ``sql/`` create (for queries, not DDL)."""

from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

metadata = sa.MetaData()

ORG_ROLE = pg.ENUM("owner", "admin", "member", "viewer", name="org_role", create_type=False)


def _clerk_id() -> sa.Column[str]:
    """The primary key of a table mirroring a Clerk object: Clerk's id."""
    return sa.Column("id", sa.Text, primary_key=True)


def _bigserial_id() -> sa.Column[int]:
    """The primary key of one of orgsync's own tables (``id bigserial PRIMARY KEY``)."""
    return sa.Column("id", sa.BigInteger, primary_key=True)


def _timestamp(name: str, *, nullable: bool = True) -> sa.Column[datetime]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _clerk_timestamps() -> list[sa.Column[datetime]]:
    """Clerk's created/updated times, the soft-delete time and the time orgsync last wrote the row."""
    return [_timestamp(name) for name in ("created_at", "updated_at", "deleted_at", "synced_at")]


organizations = sa.Table(
    "organizations",
    metadata,
    _clerk_id(),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("slug", sa.Text),
    sa.Column("image_url", sa.Text),
    sa.Column("public_metadata", pg.JSONB, nullable=False),
    *_clerk_timestamps(),
)

profiles = sa.Table(
    "profiles",
    metadata,
    _clerk_id(),
    sa.Column("email", sa.Text),
    sa.Column("first_name", sa.Text),
    sa.Column("last_name", sa.Text),
    sa.Column("image_url", sa.Text),
    *_clerk_timestamps(),
)

organization_members = sa.Table(
    "organization_members",
    metadata,
    sa.Column("id", pg.UUID, primary_key=True, server_default=sa.func.gen_random_uuid()),
    sa.Column("clerk_membership_id", sa.Text, unique=True),
    sa.Column("organization_id", sa.Text, sa.ForeignKey("organizations.id"), nullable=False),
    sa.Column("user_id", sa.Text, sa.ForeignKey("profiles.id"), nullable=False),
    sa.Column("role", ORG_ROLE, nullable=False),
    sa.Column("clerk_role", sa.Text, nullable=False),
    _timestamp("joined_at"),
    _timestamp("updated_at"),
    _timestamp("synced_at"),
)

membership_tombstones = sa.Table(
    "membership_tombstones",
    metadata,
    sa.Column("organization_id", sa.Text, primary_key=True),
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("clerk_membership_id", sa.Text),
    _timestamp("deleted_at", nullable=False),
)

sync_quarantine = sa.Table(
    "sync_quarantine",
    metadata,
    _bigserial_id(),
    sa.Column("entity", sa.Text, nullable=False),
    sa.Column("clerk_id", sa.Text),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("payload", pg.JSONB, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    _timestamp("first_seen_at", nullable=False),
    _timestamp("last_seen_at", nullable=False),
    sa.Column("record_key", sa.Text, sa.Computed("coalesce(clerk_id, md5(payload::text))")),
)

webhook_inbox = sa.Table(
    "webhook_inbox",
    metadata,
    _bigserial_id(),
    sa.Column("svix_id", sa.Text, nullable=False, unique=True),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("payload", pg.JSONB, nullable=False),
    _timestamp("event_timestamp"),
    _timestamp("received_at", nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("last_error", sa.Text),
    _timestamp("next_attempt_at"),
    _timestamp("applied_at"),
)
