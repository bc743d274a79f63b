"""The apply layer (the one write path) on a real PostgreSQL: newer wins, tombstones, stubs, quarantine."""

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from orgsync_pipeline.rows import MembershipKey, MembershipRow, OrganizationRow, ProfileRow, QuarantinedRecord
from orgsync_pipeline.store.apply import (
    ApplyCounts,
    apply_memberships,
    apply_organizations,
    apply_profiles,
    delete_memberships,
    delete_organizations,
    delete_profiles,
    insert_profile_stubs,
    prune_quarantine,
    quarantine,
)
from orgsync_pipeline.store.schema import (
    membership_tombstones,
    organization_members,
    organizations,
    profiles,
    sync_quarantine,
)

T0 = 1716883200000  # 2024-05-28T08:00:00Z in Clerk's milliseconds
MINUTE = 60_000


def at(ms: int) -> datetime:
    """Clerk milliseconds as the aware datetime PostgreSQL returns."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def org(
    org_id: str = "org_acme1", updated_at: int = T0, *, name: str = "Acme", **fields: Any
) -> OrganizationRow:
    values = {
        "id": org_id,
        "name": name,
        "slug": org_id.removeprefix("org_"),
        "image_url": None,
        "public_metadata": "{}",
        "created_at": T0,
        "updated_at": updated_at,
    }
    values.update(fields)
    return OrganizationRow(**values)


def profile(user_id: str = "user_ann1", updated_at: int = T0, *, email: str = "ann@acme.com") -> ProfileRow:
    return ProfileRow(user_id, email, "Ann", "Archer", None, T0, updated_at)


def stub(user_id: str, email: str | None = None) -> ProfileRow:
    return ProfileRow(user_id, email, "Stub", None, None, None, None)


def membership(
    membership_id: str = "orgmem_1",
    org_id: str = "org_acme1",
    user_id: str = "user_ann1",
    updated_at: int = T0,
    *,
    role: str = "member",
    clerk_role: str | None = None,
) -> MembershipRow:
    return MembershipRow(membership_id, org_id, user_id, role, clerk_role or f"org:{role}", T0, updated_at)


def rows(conn: Connection, table: sa.Table, *columns: str) -> list[tuple[Any, ...]]:
    key = table.c.id if "id" in table.c and table is not organization_members else None
    order = [key] if key is not None else [table.c.organization_id, table.c.user_id]
    return [tuple(r) for r in conn.execute(sa.select(*(table.c[c] for c in columns)).order_by(*order))]


def one(conn: Connection, table: sa.Table, row_id: str) -> sa.Row[Any] | None:
    return conn.execute(sa.select(table).where(table.c.id == row_id)).one_or_none()


def member(conn: Connection, org_id: str, user_id: str) -> sa.Row[Any] | None:
    return conn.execute(
        sa.select(organization_members).where(
            organization_members.c.organization_id == org_id, organization_members.c.user_id == user_id
        )
    ).one_or_none()


def write_marks(conn: Connection, table: str) -> list[tuple[Any, ...]]:
    """(key, xmin, synced_at) per row: xmin changes whenever PostgreSQL writes a new row version."""
    key = "organization_id, user_id" if table == "organization_members" else "id"
    return list(
        conn.execute(sa.text(f"SELECT {key}, xmin::text, synced_at FROM {table} ORDER BY {key}")).tuples()
    )


def seed(engine: Engine) -> None:
    """Two organizations, two profiles, three memberships, all at T0."""
    with engine.begin() as conn:
        apply_organizations(conn, [org("org_acme1"), org("org_beta1", name="Beta")])
        apply_profiles(conn, [profile("user_ann1"), profile("user_bob1", email="bob@beta.io")])
        apply_memberships(
            conn,
            [
                membership("orgmem_1", "org_acme1", "user_ann1", role="admin"),
                membership("orgmem_2", "org_acme1", "user_bob1"),
                membership("orgmem_3", "org_beta1", "user_bob1"),
            ],
            source="test",
        )


# ------------------------------------------------------------------------------- newer wins


def test_insert_then_identical_replay_writes_nothing(engine: Engine) -> None:
    """Re-applying identical rows counts them unchanged and writes no row version (xmin, synced_at kept)."""
    orgs = [org("org_acme1"), org("org_beta1", name="Beta")]
    users = [profile("user_ann1"), profile("user_bob1", email="bob@beta.io")]
    members = [
        membership("orgmem_1", "org_acme1", "user_ann1"),
        membership("orgmem_2", "org_beta1", "user_bob1"),
    ]
    with engine.begin() as conn:
        assert apply_organizations(conn, orgs) == ApplyCounts(received=2, inserted=2)
        assert apply_profiles(conn, users) == ApplyCounts(received=2, inserted=2)
        assert apply_memberships(conn, members, source="test").memberships == ApplyCounts(
            received=2, inserted=2
        )
    with engine.connect() as conn:
        before = {
            table: write_marks(conn, table) for table in ("organizations", "profiles", "organization_members")
        }

    with engine.begin() as conn:
        assert apply_organizations(conn, orgs) == ApplyCounts(received=2, unchanged=2)
        assert apply_profiles(conn, users) == ApplyCounts(received=2, unchanged=2)
        assert apply_memberships(conn, members, source="test").memberships == ApplyCounts(
            received=2, unchanged=2
        )

    with engine.connect() as conn:
        after = {table: write_marks(conn, table) for table in before}
    assert after == before
    assert all(len(marks) == 2 for marks in after.values())


def test_rows_land_with_exact_timestamps_and_content(engine: Engine) -> None:
    """Clerk milliseconds become exact timestamptz values; content lands as given."""
    with engine.begin() as conn:
        apply_organizations(
            conn, [org("org_acme1", T0 + 123, public_metadata='{"plan":"pro"}', image_url="i")]
        )
        stored = one(conn, organizations, "org_acme1")

    assert stored is not None
    assert stored.updated_at == at(T0 + 123)
    assert stored.updated_at.microsecond == 123_000
    assert stored.created_at == at(T0)
    assert stored.public_metadata == {"plan": "pro"}
    assert (stored.name, stored.slug, stored.image_url, stored.deleted_at) == ("Acme", "acme1", "i", None)
    assert stored.synced_at is not None


def test_newer_update_wins_and_older_one_is_ignored(engine: Engine) -> None:
    """A newer version replaces the row; an older one arriving after it changes nothing."""
    with engine.begin() as conn:
        apply_organizations(conn, [org(updated_at=T0, name="v1")])
    with engine.begin() as conn:
        assert apply_organizations(conn, [org(updated_at=T0 + 2 * MINUTE, name="v3")]).updated == 1
    with engine.connect() as conn:
        marks = write_marks(conn, "organizations")

    with engine.begin() as conn:
        counts = apply_organizations(conn, [org(updated_at=T0 + MINUTE, name="v2")])

    assert counts == ApplyCounts(received=1, unchanged=1)
    with engine.connect() as conn:
        stored = one(conn, organizations, "org_acme1")
        assert write_marks(conn, "organizations") == marks
    assert stored is not None
    assert (stored.name, stored.updated_at) == ("v3", at(T0 + 2 * MINUTE))


def test_equal_updated_at_with_different_content_is_applied(engine: Engine) -> None:
    """Same updated_at but different content still applies (the rule is >=, not >)."""
    with engine.begin() as conn:
        apply_profiles(conn, [profile(updated_at=T0, email="first@acme.com")])
    with engine.begin() as conn:
        counts = apply_profiles(conn, [profile(updated_at=T0, email="second@acme.com")])
        stored = one(conn, profiles, "user_ann1")

    assert counts == ApplyCounts(received=1, updated=1)
    assert stored is not None
    assert stored.email == "second@acme.com"


def test_membership_newer_role_wins_older_ignored(engine: Engine) -> None:
    """Membership updates follow newer-wins too: role changes apply, older versions do not."""
    seed(engine)
    with engine.begin() as conn:
        newer = apply_memberships(
            conn,
            [membership("orgmem_2", "org_acme1", "user_bob1", T0 + 2 * MINUTE, role="admin")],
            source="t",
        )
        older = apply_memberships(
            conn, [membership("orgmem_2", "org_acme1", "user_bob1", T0 + MINUTE, role="viewer")], source="t"
        )
        stored = member(conn, "org_acme1", "user_bob1")

    assert newer.memberships.updated == 1
    assert older.memberships == ApplyCounts(received=1, unchanged=1)
    assert stored is not None
    assert (stored.role, stored.clerk_role, stored.updated_at) == ("admin", "org:admin", at(T0 + 2 * MINUTE))


def test_duplicate_ids_in_one_batch_newest_wins(engine: Engine) -> None:
    """Several versions of one id in a batch merge without error; the newest is stored."""
    with engine.begin() as conn:
        counts = apply_organizations(
            conn,
            [
                org(updated_at=T0 + MINUTE, name="middle"),
                org(updated_at=T0 + 2 * MINUTE, name="newest"),
                org(updated_at=T0, name="oldest"),
            ],
        )
        apply_profiles(
            conn, [profile(updated_at=T0 + 5, email="new@x.io"), profile(updated_at=T0, email="old@x.io")]
        )
        member_counts = apply_memberships(
            conn,
            [
                membership("orgmem_1", updated_at=T0 + MINUTE, role="admin"),
                membership("orgmem_1", updated_at=T0, role="viewer"),
            ],
            source="test",
        )
        stored_org = one(conn, organizations, "org_acme1")
        stored_profile = one(conn, profiles, "user_ann1")
        stored_member = member(conn, "org_acme1", "user_ann1")

    assert counts == ApplyCounts(received=1, inserted=1)
    assert member_counts.memberships == ApplyCounts(received=1, inserted=1)
    assert stored_org is not None and stored_org.name == "newest"
    assert stored_profile is not None and stored_profile.email == "new@x.io"
    assert stored_member is not None and stored_member.role == "admin"


def test_role_is_stored_as_enum_and_clerk_role_as_text(engine: Engine) -> None:
    """organization_members.role is the org_role enum; clerk_role keeps Clerk's key as text."""
    with engine.begin() as conn:
        apply_memberships(
            conn,
            [membership("orgmem_1", role="member", clerk_role="org:billing")],
            organizations_first=[org()],
            profile_stubs=[stub("user_ann1")],
            source="test",
        )
        typed = conn.execute(
            sa.text(
                "SELECT pg_typeof(role)::text, role::text, pg_typeof(clerk_role)::text, clerk_role "
                "FROM organization_members"
            )
        ).one()

    assert tuple(typed) == ("org_role", "member", "text", "org:billing")


def test_adopted_row_is_overwritten_by_any_clerk_version(engine: Engine) -> None:
    """A row orgsync never wrote (synced_at NULL: adopted from the seed) takes Clerk's data even if older."""
    with engine.begin() as conn:
        conn.execute(
            sa.insert(organizations).values(
                id="org_acme1",
                name="Adopted",
                public_metadata={},
                updated_at=at(T0 + 10 * MINUTE),
                synced_at=None,
            )
        )
    with engine.begin() as conn:
        counts = apply_organizations(conn, [org(updated_at=T0, name="From Clerk")])
        stored = one(conn, organizations, "org_acme1")

    assert counts == ApplyCounts(received=1, updated=1)
    assert stored is not None
    assert (stored.name, stored.updated_at) == ("From Clerk", at(T0))
    assert stored.synced_at is not None


# ------------------------------------------------------------------------------- soft deletes


def test_organization_soft_delete_removes_memberships_and_stays_deleted(engine: Engine) -> None:
    """delete_organizations soft-deletes and drops the org's memberships; no-newer data cannot resurrect."""
    seed(engine)
    deleted_at = T0 + 5 * MINUTE
    with engine.begin() as conn:
        assert delete_organizations(conn, ["org_acme1"], as_of=at(deleted_at)) == ["org_acme1"]

    with engine.connect() as conn:
        stored = one(conn, organizations, "org_acme1")
        assert stored is not None and stored.deleted_at == at(deleted_at)
        assert rows(conn, organization_members, "organization_id", "user_id") == [("org_beta1", "user_bob1")]
        beta = one(conn, organizations, "org_beta1")
        assert beta is not None and beta.deleted_at is None

    for stale in (T0 + MINUTE, deleted_at):
        with engine.begin() as conn:
            counts = apply_organizations(conn, [org("org_acme1", stale, name="Stale")])
            member_counts = apply_memberships(
                conn, [membership("orgmem_1", "org_acme1", "user_ann1", stale)], source="test"
            )
        assert counts == ApplyCounts(received=1, unchanged=1)
        assert member_counts.memberships == ApplyCounts(received=1, unchanged=1)
    with engine.connect() as conn:
        stored = one(conn, organizations, "org_acme1")
        assert stored is not None
        assert (stored.name, stored.deleted_at) == ("Acme", at(deleted_at))
        assert member(conn, "org_acme1", "user_ann1") is None
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_quarantine)).scalar_one() == 0


def test_newer_data_after_soft_delete_resurrects(engine: Engine) -> None:
    """An update newer than the deletion brings the row back and clears deleted_at."""
    seed(engine)
    with engine.begin() as conn:
        delete_organizations(conn, ["org_acme1"], as_of=at(T0 + 5 * MINUTE))
    with engine.begin() as conn:
        counts = apply_organizations(conn, [org("org_acme1", T0 + 6 * MINUTE, name="Back")])
        stored = one(conn, organizations, "org_acme1")

    assert counts == ApplyCounts(received=1, updated=1)
    assert stored is not None
    assert (stored.name, stored.deleted_at, stored.updated_at) == ("Back", None, at(T0 + 6 * MINUTE))


def test_delete_older_than_the_row_leaves_it(engine: Engine) -> None:
    """A deletion whose as_of is older than the row's updated_at does not delete it."""
    seed(engine)
    with engine.begin() as conn:
        apply_organizations(conn, [org("org_acme1", T0 + 10 * MINUTE, name="Renamed")])
    with engine.begin() as conn:
        deleted = delete_organizations(conn, ["org_acme1"], as_of=at(T0 + 5 * MINUTE))
        deleted_profiles = delete_profiles(conn, ["user_ann1"], as_of=at(T0 - MINUTE))

    assert deleted == []
    assert deleted_profiles == []
    with engine.connect() as conn:
        stored = one(conn, organizations, "org_acme1")
        assert stored is not None and (stored.name, stored.deleted_at) == ("Renamed", None)
        ann = one(conn, profiles, "user_ann1")
        assert ann is not None and ann.deleted_at is None
        assert len(rows(conn, organization_members, "id")) == 3


def test_delete_of_unseen_id_leaves_a_placeholder_that_blocks_older_data(engine: Engine) -> None:
    """record_unseen keeps a deleted placeholder; a late, older create does not make a live row."""
    with engine.begin() as conn:
        delete_organizations(conn, ["org_ghost1"], as_of=at(T0 + 5 * MINUTE), record_unseen=True)
        delete_profiles(conn, ["user_ghost1"], as_of=at(T0 + 5 * MINUTE), record_unseen=True)
    with engine.connect() as conn:
        placeholder = one(conn, organizations, "org_ghost1")
        assert placeholder is not None
        assert placeholder.deleted_at == at(T0 + 5 * MINUTE)
        assert one(conn, profiles, "user_ghost1") is not None

    with engine.begin() as conn:
        counts = apply_organizations(conn, [org("org_ghost1", T0, name="Ghost")])
        profile_counts = apply_profiles(conn, [profile("user_ghost1", T0)])

    assert counts == ApplyCounts(received=1, unchanged=1)
    assert profile_counts == ApplyCounts(received=1, unchanged=1)
    with engine.connect() as conn:
        assert (
            conn.execute(
                sa.select(sa.func.count())
                .select_from(organizations)
                .where(organizations.c.deleted_at.is_(None))
            ).scalar_one()
            == 0
        )
        ghost = one(conn, organizations, "org_ghost1")
        assert ghost is not None and ghost.name != "Ghost"
        ghost_profile = one(conn, profiles, "user_ghost1")
        assert ghost_profile is not None and ghost_profile.deleted_at == at(T0 + 5 * MINUTE)


def test_delete_of_unseen_id_without_record_unseen_writes_nothing(engine: Engine) -> None:
    """Without record_unseen, deleting an id never seen leaves no row, so a later create lands."""
    with engine.begin() as conn:
        assert delete_organizations(conn, ["org_ghost1"], as_of=at(T0 + 5 * MINUTE)) == []
        assert one(conn, organizations, "org_ghost1") is None
        assert apply_organizations(conn, [org("org_ghost1", T0)]).inserted == 1


def test_profile_soft_delete_deletes_the_users_memberships(engine: Engine) -> None:
    """delete_profiles soft-deletes the user and removes every membership of that user, only theirs."""
    seed(engine)
    with engine.begin() as conn:
        assert delete_profiles(conn, ["user_bob1"], as_of=at(T0 + MINUTE)) == ["user_bob1"]

    with engine.connect() as conn:
        bob = one(conn, profiles, "user_bob1")
        assert bob is not None and bob.deleted_at == at(T0 + MINUTE)
        assert rows(conn, organization_members, "organization_id", "user_id") == [("org_acme1", "user_ann1")]
        # Stale membership data for the deleted user does not come back.
        counts = apply_memberships(conn, [membership("orgmem_2", "org_acme1", "user_bob1", T0)], source="t")
        assert counts.memberships.unchanged == 1
        assert member(conn, "org_acme1", "user_bob1") is None
        conn.rollback()


def test_written_before_guard_keeps_rows_written_since(engine: Engine) -> None:
    """Rows synced at or after written_before are not deleted; older-synced rows are."""
    with engine.begin() as conn:
        apply_organizations(conn, [org("org_old1")])
        apply_profiles(conn, [profile("user_old1")])
    with engine.begin() as conn:
        listing_started_at = conn.execute(sa.select(sa.func.now())).scalar_one()
        apply_organizations(conn, [org("org_new1")])
        apply_profiles(conn, [profile("user_new1")])
        apply_memberships(
            conn, [membership("orgmem_new1", "org_old1", "user_old1")], source="test"
        )  # synced_at == listing_started_at (same transaction clock)
    with engine.begin() as conn:
        as_of = at(T0 + 5 * MINUTE)
        deleted_orgs = delete_organizations(
            conn, ["org_old1", "org_new1"], as_of=as_of, written_before=listing_started_at
        )
        deleted_profiles = delete_profiles(
            conn, ["user_old1", "user_new1"], as_of=as_of, written_before=listing_started_at
        )

    assert deleted_orgs == ["org_old1"]
    assert deleted_profiles == ["user_old1"]
    with engine.connect() as conn:
        new_org = one(conn, organizations, "org_new1")
        assert new_org is not None and new_org.deleted_at is None
        new_profile = one(conn, profiles, "user_new1")
        assert new_profile is not None and new_profile.deleted_at is None


def test_written_before_guard_keeps_memberships_written_since(engine: Engine) -> None:
    """delete_memberships spares memberships synced at or after written_before."""
    seed(engine)
    with engine.begin() as conn:
        listing_started_at = conn.execute(sa.select(sa.func.now())).scalar_one()
        apply_memberships(
            conn, [membership("orgmem_2", "org_acme1", "user_bob1", T0 + MINUTE, role="admin")], source="test"
        )
    with engine.begin() as conn:
        deleted = delete_memberships(
            conn,
            [MembershipKey("org_acme1", "user_ann1"), MembershipKey("org_acme1", "user_bob1")],
            as_of=at(T0 + 5 * MINUTE),
            written_before=listing_started_at,
        )

    assert deleted == 1
    with engine.connect() as conn:
        assert member(conn, "org_acme1", "user_ann1") is None
        assert member(conn, "org_acme1", "user_bob1") is not None


def test_membership_kept_by_written_before_still_takes_newer_updates(engine: Engine) -> None:
    """A membership the guard kept is live: a later-arriving update newer than the stored row applies."""
    seed(engine)
    with engine.begin() as conn:
        listing_started_at = conn.execute(sa.select(sa.func.now())).scalar_one()
        apply_memberships(
            conn, [membership("orgmem_2", "org_acme1", "user_bob1", T0 + MINUTE)], source="test"
        )
    with engine.begin() as conn:
        delete_memberships(
            conn,
            [MembershipKey("org_acme1", "user_bob1", "orgmem_2")],
            as_of=at(T0 + 5 * MINUTE),
            written_before=listing_started_at,
        )
    with engine.begin() as conn:
        counts = apply_memberships(
            conn,
            [membership("orgmem_2", "org_acme1", "user_bob1", T0 + 2 * MINUTE, role="admin")],
            source="t",
        )
        stored = member(conn, "org_acme1", "user_bob1")

    assert counts.memberships.updated == 1
    assert stored is not None and stored.role == "admin"


# ------------------------------------------------------------------------------- memberships


def test_membership_gets_a_profile_stub_for_an_unknown_user(engine: Engine) -> None:
    """A membership whose user has no profile lands after a stub made from public_user_data; no FK error."""
    with engine.begin() as conn:
        apply_organizations(conn, [org()])
        counts = apply_memberships(
            conn,
            [membership("orgmem_1", "org_acme1", "user_new1")],
            profile_stubs=[stub("user_new1", "new@acme.com")],
            source="test",
        )

    assert counts.profile_stubs == 1
    assert counts.memberships == ApplyCounts(received=1, inserted=1)
    with engine.connect() as conn:
        created = one(conn, profiles, "user_new1")
        assert created is not None
        assert (created.email, created.first_name, created.updated_at) == ("new@acme.com", "Stub", None)
        assert member(conn, "org_acme1", "user_new1") is not None


def test_stub_never_overwrites_a_profile_and_the_real_user_replaces_a_stub(engine: Engine) -> None:
    """Stubs only create missing profiles; the user's own record later replaces a stub."""
    with engine.begin() as conn:
        apply_profiles(conn, [profile("user_ann1", email="real@acme.com")])
        created = insert_profile_stubs(
            conn, [stub("user_ann1", "stub@acme.com"), stub("user_bob1", "b@x.io")]
        )
    assert created == 1
    with engine.begin() as conn:
        ann = one(conn, profiles, "user_ann1")
        assert ann is not None and ann.email == "real@acme.com"
        counts = apply_profiles(conn, [profile("user_bob1", T0, email="bob@beta.io")])
        bob = one(conn, profiles, "user_bob1")

    assert counts.updated == 1
    assert bob is not None
    assert (bob.email, bob.first_name, bob.updated_at) == ("bob@beta.io", "Ann", at(T0))


def test_organizations_first_creates_the_org_before_its_memberships(engine: Engine) -> None:
    """organizations_first upserts the embedded organization, so its memberships land in the same call."""
    with engine.begin() as conn:
        counts = apply_memberships(
            conn,
            [membership("orgmem_1", "org_embedded1", "user_ann1")],
            organizations_first=[org("org_embedded1", name="Embedded")],
            profile_stubs=[stub("user_ann1")],
            source="test",
        )

    assert counts.organizations == ApplyCounts(received=1, inserted=1)
    with engine.connect() as conn:
        created = one(conn, organizations, "org_embedded1")
        assert created is not None and created.name == "Embedded"
        assert member(conn, "org_embedded1", "user_ann1") is not None


def test_membership_of_a_missing_organization_is_quarantined_and_the_rest_lands(engine: Engine) -> None:
    """A membership whose organization does not exist goes to sync_quarantine with a reason; siblings land."""
    seed(engine)
    batch = [
        membership("orgmem_4", "org_beta1", "user_ann1"),
        membership("orgmem_orphan1", "org_missing1", "user_ann1"),
        membership("orgmem_5", "org_gamma1", "user_cy1"),
    ]
    with engine.begin() as conn:
        counts = apply_memberships(
            conn,
            batch,
            organizations_first=[org("org_gamma1")],
            profile_stubs=[stub("user_ann1"), stub("user_cy1")],
            source="webhook",
        )

    assert counts.memberships == ApplyCounts(received=3, inserted=2, quarantined=1)
    with engine.connect() as conn:
        assert member(conn, "org_beta1", "user_ann1") is not None
        assert member(conn, "org_gamma1", "user_cy1") is not None
        assert member(conn, "org_missing1", "user_ann1") is None
        held = conn.execute(sa.select(sync_quarantine)).one()
    assert (held.entity, held.clerk_id, held.source) == ("membership", "orgmem_orphan1", "webhook")
    assert "org_missing1" in held.reason
    assert "does not exist" in held.reason
    assert held.payload["organization_id"] == "org_missing1"

    # Once the organization exists, the same membership lands and leaves the quarantine.
    with engine.begin() as conn:
        later = apply_memberships(
            conn, [batch[1]], organizations_first=[org("org_missing1")], source="webhook"
        )
    assert later.memberships.inserted == 1
    with engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_quarantine)).scalar_one() == 0


def test_membership_delete_leaves_a_tombstone_that_blocks_replays(engine: Engine) -> None:
    """delete_memberships removes the row, leaves a tombstone; replaying the old membership does nothing."""
    seed(engine)
    deleted_at = T0 + 5 * MINUTE
    with engine.begin() as conn:
        assert (
            delete_memberships(
                conn, [MembershipKey("org_acme1", "user_bob1", "orgmem_2")], as_of=at(deleted_at)
            )
            == 1
        )

    with engine.connect() as conn:
        assert member(conn, "org_acme1", "user_bob1") is None
        assert rows(
            conn, membership_tombstones, "organization_id", "user_id", "clerk_membership_id", "deleted_at"
        ) == [("org_acme1", "user_bob1", "orgmem_2", at(deleted_at))]
        assert len(rows(conn, organization_members, "id")) == 2

    for stale in (T0, T0 + MINUTE, deleted_at):
        with engine.begin() as conn:
            counts = apply_memberships(
                conn, [membership("orgmem_2", "org_acme1", "user_bob1", stale, role="admin")], source="test"
            )
        assert counts.memberships == ApplyCounts(received=1, unchanged=1)
    with engine.connect() as conn:
        assert member(conn, "org_acme1", "user_bob1") is None
        assert conn.execute(sa.select(sa.func.count()).select_from(sync_quarantine)).scalar_one() == 0


def test_rejoin_after_tombstone_lands(engine: Engine) -> None:
    """A new membership of the same user, newer than the tombstone, is inserted."""
    seed(engine)
    with engine.begin() as conn:
        delete_memberships(
            conn, [MembershipKey("org_acme1", "user_bob1", "orgmem_2")], as_of=at(T0 + 5 * MINUTE)
        )
    with engine.begin() as conn:
        counts = apply_memberships(
            conn,
            [membership("orgmem_rejoin1", "org_acme1", "user_bob1", T0 + 6 * MINUTE, role="viewer")],
            source="t",
        )
        stored = member(conn, "org_acme1", "user_bob1")

    assert counts.memberships == ApplyCounts(received=1, inserted=1)
    assert stored is not None
    assert (stored.clerk_membership_id, stored.role) == ("orgmem_rejoin1", "viewer")


def test_membership_delete_older_than_the_row_leaves_it(engine: Engine) -> None:
    """A membership deletion with as_of older than the row's updated_at does not delete it."""
    seed(engine)
    with engine.begin() as conn:
        apply_memberships(
            conn, [membership("orgmem_2", "org_acme1", "user_bob1", T0 + 10 * MINUTE)], source="t"
        )
    with engine.begin() as conn:
        deleted = delete_memberships(
            conn, [MembershipKey("org_acme1", "user_bob1")], as_of=at(T0 + 5 * MINUTE)
        )

    assert deleted == 0
    with engine.connect() as conn:
        assert member(conn, "org_acme1", "user_bob1") is not None


def test_membership_delete_before_create_blocks_the_late_create(engine: Engine) -> None:
    """Deleting a membership never seen still leaves a tombstone; its late, older creation is ignored."""
    seed(engine)
    with engine.begin() as conn:
        assert (
            delete_memberships(conn, [MembershipKey("org_beta1", "user_ann1")], as_of=at(T0 + 5 * MINUTE))
            == 0
        )
    with engine.begin() as conn:
        counts = apply_memberships(
            conn, [membership("orgmem_9", "org_beta1", "user_ann1", T0 + MINUTE)], source="t"
        )

    assert counts.memberships == ApplyCounts(received=1, unchanged=1)
    with engine.connect() as conn:
        assert member(conn, "org_beta1", "user_ann1") is None


def test_older_membership_delete_does_not_move_the_tombstone_back(engine: Engine) -> None:
    """Of two deletions of one membership, the tombstone keeps the later time."""
    seed(engine)
    with engine.begin() as conn:
        delete_memberships(conn, [MembershipKey("org_acme1", "user_bob1")], as_of=at(T0 + 5 * MINUTE))
        delete_memberships(conn, [MembershipKey("org_acme1", "user_bob1")], as_of=at(T0 + 2 * MINUTE))
        tombstone = conn.execute(sa.select(membership_tombstones.c.deleted_at)).scalar_one()

    assert tombstone == at(T0 + 5 * MINUTE)


# ------------------------------------------------------------------------------- quarantine


def _quarantined(conn: Connection) -> list[sa.Row[Any]]:
    return list(conn.execute(sa.select(sync_quarantine).order_by(sync_quarantine.c.id)))


def test_requarantine_updates_one_row_and_keeps_first_seen(engine: Engine) -> None:
    """Quarantining the same clerk_id again updates reason, payload and last_seen_at; first_seen_at stays."""
    with engine.begin() as conn:
        quarantine(
            conn,
            [QuarantinedRecord("organization", "org_bad1", "slug bad (got 'A B')", {"v": 1})],
            source="sync",
        )
    with engine.begin() as conn:
        quarantine(
            conn,
            [QuarantinedRecord("organization", "org_bad1", "name is missing", {"v": 2})],
            source="webhook",
        )
        # A different entity with the same id is a different record.
        quarantine(conn, [QuarantinedRecord("membership", "org_bad1", "x", {})], source="webhook")

    with engine.connect() as conn:
        held = _quarantined(conn)
    assert [(r.entity, r.clerk_id) for r in held] == [
        ("organization", "org_bad1"),
        ("membership", "org_bad1"),
    ]
    first = held[0]
    assert (first.reason, first.payload, first.source) == ("name is missing", {"v": 2}, "webhook")
    assert first.last_seen_at > first.first_seen_at


def test_quarantine_without_id_is_keyed_by_content(engine: Engine) -> None:
    """Records with no usable id are deduplicated by payload: the same one re-seen stays one row."""
    payload = {"name": "no id", "nested": {"b": 1, "a": 2}}
    with engine.begin() as conn:
        quarantine(conn, [QuarantinedRecord("organization", None, "id is missing", payload)], source="sync")
    with engine.begin() as conn:
        quarantine(
            conn,
            [
                QuarantinedRecord(
                    "organization", None, "id is missing (again)", dict(reversed(payload.items()))
                ),
                QuarantinedRecord("organization", None, "id is missing", "not a dict"),
            ],
            source="sync",
        )
        held = _quarantined(conn)

    assert [(r.reason, r.payload) for r in held] == [
        ("id is missing (again)", payload),
        ("id is missing", "not a dict"),
    ]


def test_valid_apply_releases_the_quarantined_record(engine: Engine) -> None:
    """Applying a now-valid organization or profile removes its quarantine row, and only that one."""
    with engine.begin() as conn:
        quarantine(
            conn,
            [
                QuarantinedRecord("organization", "org_acme1", "slug bad", {}),
                QuarantinedRecord("organization", "org_other1", "slug bad", {}),
                QuarantinedRecord("profile", "user_ann1", "email bad", {}),
                QuarantinedRecord("profile", "org_acme1", "unrelated entity", {}),
            ],
            source="sync",
        )
    with engine.begin() as conn:
        apply_organizations(conn, [org("org_acme1")])
        apply_profiles(conn, [profile("user_ann1")])
        held = _quarantined(conn)

    assert [(r.entity, r.clerk_id) for r in held] == [
        ("organization", "org_other1"),
        ("profile", "org_acme1"),
    ]


def test_prune_quarantine_drops_records_not_seen_since(engine: Engine) -> None:
    """prune_quarantine removes an entity's records last seen before the cutoff; others stay."""
    with engine.begin() as conn:
        quarantine(
            conn,
            [
                QuarantinedRecord("organization", "org_gone1", "bad", {}),
                QuarantinedRecord("organization", "org_still1", "bad", {}),
                QuarantinedRecord("profile", "user_old1", "bad", {}),
            ],
            source="sync",
        )
    with engine.begin() as conn:
        cutoff = conn.execute(sa.select(sa.func.now())).scalar_one()
        quarantine(conn, [QuarantinedRecord("organization", "org_still1", "still bad", {})], source="sync")
        pruned = prune_quarantine(conn, "organization", not_seen_since=cutoff)
        held = _quarantined(conn)

    assert pruned == 1
    assert sorted((r.entity, r.clerk_id) for r in held) == [
        ("organization", "org_still1"),
        ("profile", "user_old1"),
    ]
