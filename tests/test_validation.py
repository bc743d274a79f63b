"""Validation of Clerk records (pure functions): valid rows for the apply layer, the rest quarantined."""

import copy
import json
from typing import Any

import pytest

from orgsync_pipeline.rows import MembershipRow, OrganizationRow, ProfileRow, QuarantinedRecord
from orgsync_pipeline.settings import DEFAULT_ROLE_MAP, parse_role_map
from orgsync_pipeline.validation import (
    validate_memberships,
    validate_organizations,
    validate_profiles,
)

T0 = 1716883200000  # 2024-05-28T08:00:00Z in Clerk's milliseconds


def make_org(org_id: str = "org_2g7np7Hrk0SN6kj5EDMLDaKNL0S", **fields: Any) -> dict[str, Any]:
    """A Clerk Organization object as the Backend API returns it."""
    org = {
        "object": "organization",
        "id": org_id,
        "name": "Acme Corp",
        "slug": "acme-corp",
        "image_url": "https://img.clerk.com/acme",
        "has_image": True,
        "members_count": 2,
        "pending_invitations_count": 0,
        "max_allowed_memberships": 5,
        "admin_delete_enabled": True,
        "public_metadata": {"plan": "pro"},
        "private_metadata": {"secret": "x"},
        "created_by": "user_2g7np7Hrk0SN6kj5EDMLDaKNL0S",
        "created_at": T0,
        "updated_at": T0 + 1,
        "role_set_key": None,
    }
    org.update(fields)
    return org


def make_user(user_id: str = "user_2h8op3Isl1QR7tKu5FGNfaLKEoU", **fields: Any) -> dict[str, Any]:
    """A Clerk User object with two email addresses, the second one primary."""
    user = {
        "object": "user",
        "id": user_id,
        "external_id": None,
        "primary_email_address_id": "idn_primary",
        "username": None,
        "first_name": "Jane",
        "last_name": "Doe",
        "image_url": "https://img.clerk.com/jane",
        "has_image": True,
        "public_metadata": {},
        "private_metadata": None,
        "unsafe_metadata": {},
        "email_addresses": [
            {"id": "idn_old", "object": "email_address", "email_address": "old@acme.com", "linked_to": []},
            {
                "id": "idn_primary",
                "object": "email_address",
                "email_address": "jane@acme.com",
                "linked_to": [],
            },
        ],
        "phone_numbers": [],
        "web3_wallets": [],
        "external_accounts": [],
        "banned": False,
        "locked": False,
        "created_at": T0,
        "updated_at": T0 + 2,
    }
    user.update(fields)
    return user


def make_membership(
    membership_id: str = "orgmem_2g7np7Hrk0SN6kj5EDMLDaKNL0S",
    *,
    org: dict[str, Any] | None = None,
    user_id: str = "user_2h8op3Isl1QR7tKu5FGNfaLKEoU",
    role: str = "org:member",
    **fields: Any,
) -> dict[str, Any]:
    """A Clerk OrganizationMembership with its embedded organization and public_user_data."""
    membership = {
        "object": "organization_membership",
        "id": membership_id,
        "role": role,
        "role_name": "Member",
        "permissions": ["org:posts:read"],
        "public_metadata": {},
        "private_metadata": {},
        "organization": org if org is not None else make_org(),
        "public_user_data": {
            "user_id": user_id,
            "first_name": "Jane",
            "last_name": "Doe",
            "profile_image_url": "https://img.clerk.com/jane",
            "image_url": "https://img.clerk.com/jane",
            "has_image": True,
            "identifier": "jane@acme.com",
            "username": None,
        },
        "created_at": T0,
        "updated_at": T0 + 3,
    }
    membership.update(fields)
    return membership


def _only_reason(quarantined: list[QuarantinedRecord], clerk_id: str | None) -> str:
    matching = [record for record in quarantined if record.clerk_id == clerk_id]
    assert len(matching) == 1, quarantined
    return matching[0].reason


# ------------------------------------------------------------------------------- valid records


def test_valid_organization_becomes_a_row() -> None:
    """A valid organization yields one row with Clerk's ms timestamps kept and metadata as JSON text."""
    result = validate_organizations([make_org()])

    assert result.quarantined == []
    assert result.rows == [
        OrganizationRow(
            id="org_2g7np7Hrk0SN6kj5EDMLDaKNL0S",
            name="Acme Corp",
            slug="acme-corp",
            image_url="https://img.clerk.com/acme",
            public_metadata='{"plan":"pro"}',
            created_at=T0,
            updated_at=T0 + 1,
        )
    ]
    assert json.loads(result.rows[0].public_metadata) == {"plan": "pro"}


def test_organization_null_metadata_and_empty_slug_are_accepted() -> None:
    """public_metadata null (allowed by Clerk's JS types) becomes {}; an empty slug becomes None."""
    result = validate_organizations([make_org(public_metadata=None, slug="", image_url=None)])

    assert result.quarantined == []
    assert result.rows[0].public_metadata == "{}"
    assert result.rows[0].slug is None
    assert result.rows[0].image_url is None


def test_valid_user_becomes_a_profile_with_the_primary_email() -> None:
    """The profile's email is the address whose id is primary_email_address_id, not the first one."""
    result = validate_profiles([make_user()])

    assert result.quarantined == []
    assert result.rows == [
        ProfileRow(
            id="user_2h8op3Isl1QR7tKu5FGNfaLKEoU",
            email="jane@acme.com",
            first_name="Jane",
            last_name="Doe",
            image_url="https://img.clerk.com/jane",
            created_at=T0,
            updated_at=T0 + 2,
        )
    ]


def test_user_without_primary_email_is_valid_with_no_email() -> None:
    """A user with no primary email (phone-only sign-up) is valid with email None."""
    result = validate_profiles([make_user(primary_email_address_id=None, email_addresses=[])])

    assert result.quarantined == []
    assert result.rows[0].email is None


def test_valid_membership_yields_row_organization_and_profile_stub() -> None:
    """A membership becomes a row, plus its embedded organization and a stub of its user."""
    org = make_org("org_embedded1", name="Embedded", slug="embedded")
    result = validate_memberships([make_membership(org=org, role="org:admin")], DEFAULT_ROLE_MAP)

    assert result.quarantined == []
    assert result.rows == [
        MembershipRow(
            id="orgmem_2g7np7Hrk0SN6kj5EDMLDaKNL0S",
            organization_id="org_embedded1",
            user_id="user_2h8op3Isl1QR7tKu5FGNfaLKEoU",
            role="admin",
            clerk_role="org:admin",
            created_at=T0,
            updated_at=T0 + 3,
        )
    ]
    assert [row.id for row in result.organizations] == ["org_embedded1"]
    assert result.organizations[0].name == "Embedded"
    assert result.profile_stubs == [
        ProfileRow(
            id="user_2h8op3Isl1QR7tKu5FGNfaLKEoU",
            email="jane@acme.com",
            first_name="Jane",
            last_name="Doe",
            image_url="https://img.clerk.com/jane",
            created_at=None,
            updated_at=None,
        )
    ]


def test_membership_stub_email_only_from_an_email_identifier() -> None:
    """A public_user_data identifier that is not an email (a phone number) gives a stub without email."""
    membership = make_membership()
    membership["public_user_data"]["identifier"] = "+15555550100"

    result = validate_memberships([membership], DEFAULT_ROLE_MAP)

    assert result.profile_stubs[0].email is None


def test_memberships_of_one_org_yield_its_newest_embedded_version_once() -> None:
    """Several memberships embedding the same organization yield it once, its newest version."""
    older = make_org("org_shared1", name="Old name", updated_at=T0 + 10)
    newer = make_org("org_shared1", name="New name", updated_at=T0 + 20)
    records = [
        make_membership("orgmem_a1", org=older, user_id="user_a1"),
        make_membership("orgmem_b1", org=newer, user_id="user_b1"),
        make_membership("orgmem_c1", org=older, user_id="user_c1"),
    ]

    result = validate_memberships(records, DEFAULT_ROLE_MAP)

    assert result.quarantined == []
    assert [(row.id, row.name) for row in result.organizations] == [("org_shared1", "New name")]
    assert sorted(stub.id for stub in result.profile_stubs) == ["user_a1", "user_b1", "user_c1"]


def test_membership_with_invalid_embedded_organization_quarantines_the_organization() -> None:
    """An embedded organization that fails validation is quarantined as an organization."""
    org = make_org("org_badslug1", slug="Not A Slug")

    result = validate_memberships([make_membership(org=org)], DEFAULT_ROLE_MAP)

    assert result.organizations == []
    assert [(q.entity, q.clerk_id) for q in result.quarantined] == [("organization", "org_badslug1")]
    assert "slug" in result.quarantined[0].reason
    assert "'Not A Slug'" in result.quarantined[0].reason


# ------------------------------------------------------------------------------- failing checks


@pytest.mark.parametrize(
    ("bad", "field", "shown"),
    [
        ({"id": "team_2g7np7Hrk0SN6kj5"}, "id", "'team_2g7np7Hrk0SN6kj5'"),
        ({"name": None}, "name", "missing"),
        ({"name": "   "}, "name", "'   '"),
        ({"slug": "Acme Corp"}, "slug", "'Acme Corp'"),
        ({"slug": "acme--corp"}, "slug", "'acme--corp'"),
        ({"created_at": T0 // 1000}, "created_at", str(T0 // 1000)),
        ({"updated_at": (T0 + 1) // 1000}, "updated_at", str((T0 + 1) // 1000)),
        ({"updated_at": str(T0)}, "updated_at", repr(str(T0))),
        ({"updated_at": True}, "updated_at", "True"),
        ({"public_metadata": ["plan", "pro"]}, "public_metadata", "['plan', 'pro']"),
        ({"public_metadata": "{}"}, "public_metadata", "'{}'"),
    ],
)
def test_invalid_organization_is_quarantined_with_field_and_value(
    bad: dict[str, Any], field: str, shown: str
) -> None:
    """Each failed check quarantines the record with a reason naming the field and the bad value,
    and its valid sibling still passes."""
    good = make_org("org_good1")
    broken = make_org("org_broken1", **bad)
    broken_id = broken["id"]

    result = validate_organizations([good, broken])

    assert [row.id for row in result.rows] == ["org_good1"]
    assert len(result.quarantined) == 1
    record = result.quarantined[0]
    assert record.entity == "organization"
    assert record.clerk_id == broken_id
    assert record.payload == broken
    assert field in record.reason
    assert shown in record.reason


@pytest.mark.parametrize(
    ("bad", "field", "shown"),
    [
        ({"id": "usr_123"}, "id", "'usr_123'"),
        ({"created_at": T0 // 1000}, "created_at", str(T0 // 1000)),
        ({"first_name": 42}, "first_name", "42"),
    ],
)
def test_invalid_user_is_quarantined_with_field_and_value(
    bad: dict[str, Any], field: str, shown: str
) -> None:
    """A user failing a check is quarantined as a profile with the field and value in its reason."""
    result = validate_profiles([make_user("user_good1"), make_user("user_broken1", **bad)])

    assert [row.id for row in result.rows] == ["user_good1"]
    assert [q.entity for q in result.quarantined] == ["profile"]
    assert field in result.quarantined[0].reason
    assert shown in result.quarantined[0].reason


def test_user_primary_email_without_at_sign_is_quarantined() -> None:
    """A primary email address that is not an address is quarantined naming the email field."""
    user = make_user("user_bademail1")
    user["email_addresses"][1]["email_address"] = "not-an-email"

    result = validate_profiles([user])

    assert result.rows == []
    assert "email" in _only_reason(result.quarantined, "user_bademail1")
    assert "'not-an-email'" in _only_reason(result.quarantined, "user_bademail1")


@pytest.mark.parametrize("record", ["org_2g7np7Hrk0SN6kj5", None, 42, ["org_x"]])
def test_record_that_is_not_a_dict_is_quarantined(record: Any) -> None:
    """A listing entry that is not a JSON object is quarantined, without an id, and the rest passes."""
    result = validate_organizations([make_org("org_good1"), record])

    assert [row.id for row in result.rows] == ["org_good1"]
    assert len(result.quarantined) == 1
    assert result.quarantined[0].clerk_id is None
    assert result.quarantined[0].payload == record
    assert "not a JSON object" in result.quarantined[0].reason


def test_several_failures_of_one_record_are_all_reported() -> None:
    """A record failing several checks is quarantined once with every reason."""
    result = validate_organizations([make_org("org_multi1", slug="Bad Slug", created_at=17)])

    reason = _only_reason(result.quarantined, "org_multi1")
    assert "slug" in reason
    assert "created_at" in reason


def test_duplicate_id_within_a_listing_is_quarantined() -> None:
    """Two records with the same id are both quarantined (no way to tell which is right); others pass."""
    first = make_org("org_dup1", name="First")
    second = make_org("org_dup1", name="Second")

    result = validate_organizations([first, make_org("org_unique1"), second])

    assert [row.id for row in result.rows] == ["org_unique1"]
    assert [q.clerk_id for q in result.quarantined] == ["org_dup1", "org_dup1"]
    assert [q.payload["name"] for q in result.quarantined] == ["First", "Second"]
    for record in result.quarantined:
        assert "id" in record.reason
        assert "'org_dup1'" in record.reason
        assert "more than once" in record.reason


def test_duplicate_membership_key_with_different_ids_is_quarantined() -> None:
    """Two memberships of the same (organization, user) with different ids are both quarantined."""
    org = make_org("org_team1")
    records = [
        make_membership("orgmem_one1", org=org, user_id="user_same1"),
        make_membership("orgmem_two1", org=org, user_id="user_same1"),
        make_membership("orgmem_other1", org=org, user_id="user_other1"),
    ]

    result = validate_memberships(records, DEFAULT_ROLE_MAP)

    assert [row.id for row in result.rows] == ["orgmem_other1"]
    assert sorted(q.clerk_id or "" for q in result.quarantined) == ["orgmem_one1", "orgmem_two1"]
    for record in result.quarantined:
        assert record.entity == "membership"
        assert "organization_id" in record.reason
        assert "user_id" in record.reason
        assert "more than once" in record.reason


def test_duplicate_membership_key_reason_names_the_values() -> None:
    """The reason for a duplicated (organization, user) names the organization and user ids."""
    org = make_org("org_team1")
    records = [
        make_membership("orgmem_one1", org=org, user_id="user_same1"),
        make_membership("orgmem_two1", org=org, user_id="user_same1"),
    ]

    result = validate_memberships(records, DEFAULT_ROLE_MAP)

    assert result.rows == []
    assert sorted(q.clerk_id or "" for q in result.quarantined) == ["orgmem_one1", "orgmem_two1"]
    for record in result.quarantined:
        assert "org_team1" in record.reason
        assert "user_same1" in record.reason


@pytest.mark.parametrize(
    ("field", "value"), [("created_at", None), ("updated_at", None), ("updated_at", float(T0))]
)
def test_bad_timestamp_quarantines_only_its_record(field: str, value: Any) -> None:
    """A record with a missing or float timestamp is quarantined alone; its valid siblings become rows."""
    broken = make_org("org_badtime1")
    broken[field] = value

    result = validate_organizations([make_org("org_good1"), broken])

    assert [q.clerk_id for q in result.quarantined] == ["org_badtime1"]
    assert field in result.quarantined[0].reason
    assert [row.id for row in result.rows] == ["org_good1"]


def test_float_timestamp_is_quarantined_naming_field_and_value() -> None:
    """A lone record with a float updated_at is quarantined naming the field and the float."""
    result = validate_organizations([make_org("org_floattime1", updated_at=float(T0))])

    assert result.rows == []
    reason = _only_reason(result.quarantined, "org_floattime1")
    assert "updated_at" in reason
    assert repr(float(T0)) in reason


def test_missing_timestamp_is_quarantined_naming_the_field() -> None:
    """A lone record without created_at is quarantined with a reason saying created_at is missing."""
    broken = make_org("org_notime1")
    del broken["created_at"]

    result = validate_organizations([broken])

    assert result.rows == []
    assert "created_at is missing" in _only_reason(result.quarantined, "org_notime1")


@pytest.mark.parametrize(
    ("bad", "field", "shown"),
    [
        ({"id": "mem_123"}, "id", "'mem_123'"),
        ({"created_at": T0 // 1000}, "created_at", str(T0 // 1000)),
        ({"public_user_data": {"user_id": "u-1"}}, "user_id", "'u-1'"),
    ],
)
def test_invalid_membership_is_quarantined_with_field_and_value(
    bad: dict[str, Any], field: str, shown: str
) -> None:
    """A membership failing a check is quarantined with field and value; its sibling passes."""
    org = make_org("org_team1")
    good = make_membership("orgmem_good1", org=org, user_id="user_good1")
    broken = make_membership("orgmem_broken1", org=org, user_id="user_broken1", **bad)

    result = validate_memberships([good, broken], DEFAULT_ROLE_MAP)

    assert [row.id for row in result.rows] == ["orgmem_good1"]
    assert len(result.quarantined) == 1
    assert result.quarantined[0].entity == "membership"
    assert field in result.quarantined[0].reason
    assert shown in result.quarantined[0].reason
    assert [stub.id for stub in result.profile_stubs] == ["user_good1"]


def test_membership_without_organization_is_quarantined() -> None:
    """A membership whose organization is missing is quarantined naming organization_id."""
    result = validate_memberships([make_membership("orgmem_noorg1", organization=None)], DEFAULT_ROLE_MAP)

    assert result.rows == []
    assert result.organizations == []
    assert "organization_id is missing" in _only_reason(result.quarantined, "orgmem_noorg1")


# ------------------------------------------------------------------------------- roles


@pytest.mark.parametrize(
    ("clerk_role", "app_role"),
    [
        ("org:admin", "admin"),
        ("org:member", "member"),
        ("org:owner", "owner"),
        ("org:viewer", "viewer"),
        ("admin", "admin"),
        ("basic_member", "member"),
        ("guest_member", "viewer"),
    ],
)
def test_default_role_mapping(clerk_role: str, app_role: str) -> None:
    """Each default Clerk role key maps to its app role; the Clerk key is kept as clerk_role."""
    result = validate_memberships([make_membership(role=clerk_role)], DEFAULT_ROLE_MAP)

    assert result.quarantined == []
    assert [(row.role, row.clerk_role) for row in result.rows] == [(app_role, clerk_role)]


def test_unmapped_custom_role_is_quarantined_while_siblings_pass() -> None:
    """A custom role missing from the role map is quarantined naming ORGSYNC_ROLE_MAP and the role."""
    org = make_org("org_team1")
    records = [
        make_membership("orgmem_admin1", org=org, user_id="user_admin1", role="org:admin"),
        make_membership("orgmem_billing1", org=org, user_id="user_billing1", role="org:billing"),
        make_membership("orgmem_member1", org=org, user_id="user_member1", role="org:member"),
    ]

    result = validate_memberships(records, DEFAULT_ROLE_MAP)

    assert [(row.id, row.role) for row in result.rows] == [
        ("orgmem_admin1", "admin"),
        ("orgmem_member1", "member"),
    ]
    reason = _only_reason(result.quarantined, "orgmem_billing1")
    assert "ORGSYNC_ROLE_MAP" in reason
    assert "'org:billing'" in reason
    # The quarantined membership's user gets no stub; the valid ones' do.
    assert sorted(stub.id for stub in result.profile_stubs) == ["user_admin1", "user_member1"]


def test_role_map_setting_makes_a_custom_role_valid() -> None:
    """With ORGSYNC_ROLE_MAP {"org:billing": "member"} the custom role is valid with app role member."""
    role_map = parse_role_map('{"org:billing":"member"}')

    result = validate_memberships([make_membership(role="org:billing")], role_map)

    assert result.quarantined == []
    assert [(row.role, row.clerk_role) for row in result.rows] == [("member", "org:billing")]


def test_validation_does_not_mutate_the_records() -> None:
    """Validation leaves the raw Clerk records as received (they are kept as quarantine payloads)."""
    records = [make_membership(), make_membership("orgmem_bad1", user_id="user_x1", role="org:billing")]
    before = copy.deepcopy(records)

    validate_memberships(records, DEFAULT_ROLE_MAP)

    assert records == before
