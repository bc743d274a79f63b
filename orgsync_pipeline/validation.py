"""Validation of Clerk records with pandera: valid rows for the apply layer, the rest to quarantine.

Every record is first flattened into the columns orgsync stores; pandera then checks the whole
listing at once (lazily, so every failure of every record is reported). A record that fails any
check is quarantined with a reason naming the check and the value; the valid rest goes on.
"""

import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import pandas as pd
import pandera.pandas as pa

from orgsync_pipeline.rows import Entity, MembershipRow, OrganizationRow, ProfileRow, QuarantinedRecord
from orgsync_pipeline.storable import (
    json_problem,
    short_repr,
    storable_id,
    text_problem,
)

# Clerk timestamps are milliseconds; these bounds (2001-09-09 … 2286-11-20) reject seconds.
MIN_MS = 10**12
MAX_MS = 10**13 - 1

ORG_ID = re.compile(r"org_[A-Za-z0-9]{1,251}")
USER_ID = re.compile(r"user_[A-Za-z0-9]{1,250}")
MEMBERSHIP_ID = re.compile(r"orgmem_[A-Za-z0-9]{1,248}")
JSON_COLUMNS = frozenset({"public_metadata"})
_EXPECTED = {
    "created_at": "an integer Unix timestamp in milliseconds",
    "updated_at": "an integer Unix timestamp in milliseconds",
}
SLUG = re.compile(r"[a-z0-9]+(?:[-_][a-z0-9]+)*")


RowT = TypeVar("RowT")


@dataclass
class Validated(Generic[RowT]):
    """Valid rows in the apply layer's shape, and the records that failed with their reasons."""

    rows: list[RowT] = field(default_factory=list)
    quarantined: list[QuarantinedRecord] = field(default_factory=list)


@dataclass
class ValidatedMemberships:
    """Valid memberships, plus what must exist before them: their organizations and user stubs."""

    rows: list[MembershipRow] = field(default_factory=list)
    organizations: list[OrganizationRow] = field(default_factory=list)
    profile_stubs: list[ProfileRow] = field(default_factory=list)
    quarantined: list[QuarantinedRecord] = field(default_factory=list)


def _elementwise(predicate: Callable[[Any], bool], name: str, error: str) -> pa.Check:
    return pa.Check(lambda s: s.map(predicate), name=name, error=error)


def _matches(pattern: re.Pattern[str], name: str, error: str) -> pa.Check:
    return _elementwise(lambda v: isinstance(v, str) and pattern.fullmatch(v) is not None, name, error)


def _is_text(name: str = "is_text") -> pa.Check:
    return _elementwise(lambda v: isinstance(v, str), name, "must be a string")


MS_TIMESTAMP = _elementwise(
    lambda v: type(v) is int and MIN_MS <= v <= MAX_MS,
    "ms_timestamp",
    "must be an integer Unix timestamp in milliseconds",
)


def _timestamp_column() -> pa.Column:
    return pa.Column(nullable=False, checks=[MS_TIMESTAMP])


ORGANIZATION_SCHEMA = pa.DataFrameSchema(
    {
        "id": pa.Column(
            nullable=False, unique=True, checks=[_matches(ORG_ID, "org_id", "must look like org_…")]
        ),
        "name": pa.Column(
            nullable=False,
            checks=[
                _elementwise(
                    lambda v: isinstance(v, str) and v.strip() != "", "name", "must be non-empty text"
                )
            ],
        ),
        "slug": pa.Column(
            nullable=True,
            checks=[_matches(SLUG, "slug", "must be lowercase letters, digits and single dashes")],
        ),
        "image_url": pa.Column(nullable=True, checks=[_is_text()]),
        "public_metadata": pa.Column(
            nullable=False,
            checks=[_elementwise(lambda v: isinstance(v, dict), "json_object", "must be a JSON object")],
        ),
        "created_at": _timestamp_column(),
        "updated_at": _timestamp_column(),
    },
    name=Entity.ORGANIZATION,
)

PROFILE_SCHEMA = pa.DataFrameSchema(
    {
        "id": pa.Column(
            nullable=False, unique=True, checks=[_matches(USER_ID, "user_id", "must look like user_…")]
        ),
        "email": pa.Column(
            nullable=True,
            checks=[
                _elementwise(lambda v: isinstance(v, str) and "@" in v, "email", "must be an email address")
            ],
        ),
        "first_name": pa.Column(nullable=True, checks=[_is_text()]),
        "last_name": pa.Column(nullable=True, checks=[_is_text()]),
        "image_url": pa.Column(nullable=True, checks=[_is_text()]),
        "created_at": _timestamp_column(),
        "updated_at": _timestamp_column(),
    },
    name=Entity.PROFILE,
)


def membership_schema(role_map: Mapping[str, str]) -> pa.DataFrameSchema:
    """Memberships, with roles checked against ``role_map`` (defaults plus ``ORGSYNC_ROLE_MAP``)."""
    return pa.DataFrameSchema(
        {
            "id": pa.Column(
                nullable=False,
                unique=True,
                checks=[_matches(MEMBERSHIP_ID, "membership_id", "must look like orgmem_…")],
            ),
            "organization_id": pa.Column(
                nullable=False, checks=[_matches(ORG_ID, "org_id", "must look like org_…")]
            ),
            "user_id": pa.Column(
                nullable=False, checks=[_matches(USER_ID, "user_id", "must look like user_…")]
            ),
            "clerk_role": pa.Column(
                nullable=False,
                checks=[
                    _elementwise(
                        lambda v: isinstance(v, str) and v in role_map,
                        "role_mapped",
                        "has no app role in the role map; add it to ORGSYNC_ROLE_MAP",
                    )
                ],
            ),
            "created_at": _timestamp_column(),
            "updated_at": _timestamp_column(),
        },
        unique=["organization_id", "user_id"],
        name=Entity.MEMBERSHIP,
    )


def validate_organizations(records: Sequence[Any]) -> Validated[OrganizationRow]:
    """Split Clerk Organization objects into valid rows and quarantined records."""
    flat = [_flatten(record, _organization_fields) for record in records]
    valid, quarantined = _run_schema(ORGANIZATION_SCHEMA, records, flat, Entity.ORGANIZATION)
    rows = [
        OrganizationRow(
            id=row["id"],
            name=row["name"],
            slug=row["slug"],
            image_url=row["image_url"],
            public_metadata=json.dumps(row["public_metadata"], separators=(",", ":")),
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )
        for row in valid.values()
    ]
    return Validated(rows, quarantined)


def validate_profiles(records: Sequence[Any]) -> Validated[ProfileRow]:
    """Split Clerk User objects into valid profile rows and quarantined records."""
    flat = [_flatten(record, _profile_fields) for record in records]
    valid, quarantined = _run_schema(PROFILE_SCHEMA, records, flat, Entity.PROFILE)
    rows = [ProfileRow(**row) for row in valid.values()]
    return Validated(rows, quarantined)


def validate_memberships(records: Sequence[Any], role_map: Mapping[str, str]) -> ValidatedMemberships:
    """Split Clerk OrganizationMembership objects into valid rows and quarantined records.

    Each valid membership also yields its embedded organization (validated like any organization)
    and a profile stub from its ``public_user_data``, so the apply layer can create both before the
    membership that references them.
    """
    flat = [_flatten(record, _membership_fields) for record in records]
    valid, quarantined = _run_schema(membership_schema(role_map), records, flat, Entity.MEMBERSHIP)
    result = ValidatedMemberships(quarantined=quarantined)
    result.rows = [
        MembershipRow(
            id=row["id"],
            organization_id=row["organization_id"],
            user_id=row["user_id"],
            role=role_map[row["clerk_role"]],
            clerk_role=row["clerk_role"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
        )
        for row in valid.values()
    ]

    embedded: dict[str, Any] = {}
    stubs: dict[str, ProfileRow] = {}
    for i, row in valid.items():
        record = records[i]
        org = record.get("organization")
        current = embedded.get(row["organization_id"])
        if current is None or record_updated_at(org) > record_updated_at(current):
            embedded[row["organization_id"]] = org
        if row["user_id"] not in stubs:
            stubs[row["user_id"]] = _profile_stub(record.get("public_user_data") or {})
    orgs = validate_organizations(list(embedded.values()))
    result.organizations = orgs.rows
    result.quarantined.extend(orgs.quarantined)
    result.profile_stubs = list(stubs.values())
    return result


def record_id(record: Any) -> str | None:
    """A raw Clerk record's ``id``, or None when it has no usable one (see :func:`storable_id`)."""
    return storable_id(record.get("id")) if isinstance(record, dict) else None


def record_updated_at(record: Any) -> int:
    """A raw Clerk record's ``updated_at`` in ms, or -1 when it has no usable one (sorts oldest)."""
    value = record.get("updated_at") if isinstance(record, dict) else None
    return value if type(value) is int else -1


def _organization_fields(record: dict[str, Any]) -> dict[str, Any]:
    metadata = record.get("public_metadata")
    return {
        "id": record.get("id"),
        "name": record.get("name"),
        "slug": record.get("slug") or None,
        "image_url": record.get("image_url"),
        # Clerk's spec requires public_metadata, yet its JS types allow null: treat null as empty.
        "public_metadata": {} if metadata is None else metadata,
        "created_at": record.get("created_at"),
        "updated_at": record.get("updated_at"),
    }


def _profile_fields(record: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": record.get("id"),
        "email": primary_email(record),
        "first_name": record.get("first_name"),
        "last_name": record.get("last_name"),
        "image_url": record.get("image_url"),
        "created_at": record.get("created_at"),
        "updated_at": record.get("updated_at"),
    }


def membership_pair(record: Any) -> tuple[str | None, str | None]:
    """A raw membership's ``(organization.id, public_user_data.user_id)``; None where absent or not
    a usable id (see :func:`storable_id`), so the pair is always hashable."""
    organization_id, user_id = _raw_membership_pair(record)
    return storable_id(organization_id), storable_id(user_id)


def _raw_membership_pair(record: Any) -> tuple[Any, Any]:
    if not isinstance(record, dict):
        return None, None
    org = record.get("organization")
    user = record.get("public_user_data")
    return (
        org.get("id") if isinstance(org, dict) else None,
        user.get("user_id") if isinstance(user, dict) else None,
    )


def _membership_fields(record: dict[str, Any]) -> dict[str, Any]:
    organization_id, user_id = _raw_membership_pair(record)
    return {
        "id": record.get("id"),
        "organization_id": organization_id,
        "user_id": user_id,
        "clerk_role": record.get("role"),
        "created_at": record.get("created_at"),
        "updated_at": record.get("updated_at"),
    }


def primary_email(user: Mapping[str, Any]) -> str | None:
    """The address of the user's primary email (``primary_email_address_id``), if any."""
    primary_id = user.get("primary_email_address_id")
    addresses = user.get("email_addresses")
    if not primary_id or not isinstance(addresses, list):
        return None
    for address in addresses:
        if isinstance(address, dict) and address.get("id") == primary_id:
            return address.get("email_address")
    return None


def _profile_stub(user: Mapping[str, Any]) -> ProfileRow:
    identifier = _text_or_none(user.get("identifier"))
    return ProfileRow(
        id=user["user_id"],
        email=identifier if identifier and "@" in identifier else None,
        first_name=_text_or_none(user.get("first_name")),
        last_name=_text_or_none(user.get("last_name")),
        image_url=_text_or_none(user.get("image_url")),
        created_at=None,
        updated_at=None,
    )


def _text_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and text_problem(value) is None else None


def _flatten(record: Any, fields: Callable[[dict[str, Any]], dict[str, Any]]) -> dict[str, Any] | None:
    return fields(record) if isinstance(record, dict) else None


def _run_schema(
    schema: pa.DataFrameSchema,
    records: Sequence[Any],
    flat: list[dict[str, Any] | None],
    entity: Entity,
) -> tuple[dict[int, dict[str, Any]], list[QuarantinedRecord]]:
    """Validate ``flat`` with ``schema``; return the valid flattened records by index (in order) and
    the quarantined ones."""
    reasons: dict[int, list[str]] = {
        i: ["record is not a JSON object"] if row is None else problems
        for i, row in enumerate(flat)
        if (problems := _storage_problems(row)) or row is None
    }
    # A record PostgreSQL could not store stays out of the frame: pandera would choke on its unhashable
    # values, and one such value in a batch's COPY would fail the whole batch.
    frame_rows = {i: row for i, row in enumerate(flat) if i not in reasons and row is not None}
    frame_index = list(frame_rows)
    if frame_index:
        # dtype=object keeps each value as received: one null or float timestamp must not turn a whole
        # column into floats and fail its valid neighbours.
        frame = pd.DataFrame(
            list(frame_rows.values()), index=frame_index, columns=list(schema.columns), dtype=object
        )
        try:
            schema.validate(frame, lazy=True)
        except pa.errors.SchemaErrors as exc:
            for case in exc.failure_cases.itertuples(index=False):
                if pd.isna(case.index):
                    raise  # a schema-level failure (not about one record) is a bug, not bad data
                key = {name: frame_rows[int(case.index)][name] for name in schema.unique or ()}
                reason = _reason(case.column, case.check, case.failure_case, key)
                reasons.setdefault(int(case.index), []).append(reason)
    quarantined = [
        QuarantinedRecord(
            entity=entity,
            clerk_id=record_id(records[i]),
            reason="; ".join(dict.fromkeys(reasons[i])),
            payload=records[i],
        )
        for i in sorted(reasons)
    ]
    return {i: row for i, row in frame_rows.items() if i not in reasons}, quarantined


def _storage_problems(row: dict[str, Any] | None) -> list[str]:
    """What in a flattened record PostgreSQL could not store, or any value pandera could not check."""
    problems: list[str] = []
    for column, value in (row or {}).items():
        if column in JSON_COLUMNS:
            problem = json_problem(value, where=column)
            if problem:
                problems.append(problem)
        elif isinstance(value, str):
            problem = text_problem(value)
            if problem:
                problems.append(f"{column} {problem} (got {short_repr(value)})")
        elif not (value is None or isinstance(value, bool | int | float)):
            expected = _EXPECTED.get(column, "text")
            problems.append(
                f"{column} must be {expected}, not a {type(value).__name__} (got {short_repr(value)})"
            )
    return problems


def _reason(column: str, check: str, value: Any, unique_key: dict[str, Any]) -> str:
    shown = short_repr(value)
    if check == "not_nullable":
        return f"{column} is missing"
    if check == "field_uniqueness":
        return f"{column} {shown} appears more than once in the listing"
    if check == "multiple_fields_uniqueness":
        pairs = ", ".join(f"{name}={short_repr(key_value)}" for name, key_value in unique_key.items())
        return f"({pairs}) appears more than once in the listing"
    return f"{column} {check} (got {shown})"
