"""SQLAlchemy Core descriptions of the tables the migrations in ``sql/`` create (for queries, not DDL)."""

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql as pg

metadata = sa.MetaData()

ORG_ROLE = pg.ENUM("owner", "admin", "member", "viewer", name="org_role", create_type=False)

organizations = sa.Table(
    "organizations",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("slug", sa.Text),
    sa.Column("image_url", sa.Text),
    sa.Column("public_metadata", pg.JSONB, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
    sa.Column("deleted_at", sa.DateTime(timezone=True)),
    sa.Column("synced_at", sa.DateTime(timezone=True)),
)

profiles = sa.Table(
    "profiles",
    metadata,
    sa.Column("id", sa.Text, primary_key=True),
    sa.Column("email", sa.Text),
    sa.Column("first_name", sa.Text),
    sa.Column("last_name", sa.Text),
    sa.Column("image_url", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
    sa.Column("deleted_at", sa.DateTime(timezone=True)),
    sa.Column("synced_at", sa.DateTime(timezone=True)),
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
    sa.Column("joined_at", sa.DateTime(timezone=True)),
    sa.Column("updated_at", sa.DateTime(timezone=True)),
    sa.Column("synced_at", sa.DateTime(timezone=True)),
)

membership_tombstones = sa.Table(
    "membership_tombstones",
    metadata,
    sa.Column("organization_id", sa.Text, primary_key=True),
    sa.Column("user_id", sa.Text, primary_key=True),
    sa.Column("clerk_membership_id", sa.Text),
    sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=False),
)

sync_quarantine = sa.Table(
    "sync_quarantine",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("entity", sa.Text, nullable=False),
    sa.Column("clerk_id", sa.Text),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("payload", pg.JSONB, nullable=False),
    sa.Column("source", sa.Text, nullable=False),
    sa.Column("first_seen_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("record_key", sa.Text, sa.Computed("coalesce(clerk_id, md5(payload::text))")),
)

webhook_inbox = sa.Table(
    "webhook_inbox",
    metadata,
    sa.Column("id", sa.BigInteger, primary_key=True),
    sa.Column("svix_id", sa.Text, nullable=False, unique=True),
    sa.Column("event_type", sa.Text, nullable=False),
    sa.Column("payload", pg.JSONB, nullable=False),
    sa.Column("event_timestamp", sa.DateTime(timezone=True)),
    sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("next_attempt_at", sa.DateTime(timezone=True)),
    sa.Column("applied_at", sa.DateTime(timezone=True)),
)
