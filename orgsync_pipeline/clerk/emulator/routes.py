"""The Backend API endpoints the emulator serves (``GET`` only): listings with Clerk's paging, ordering and
filters, and point lookups, answered from the state in the API's shapes."""

from collections.abc import Sequence
from typing import Any

from orgsync_pipeline.clerk.emulator.errors import _invalid_param, _not_found
from orgsync_pipeline.clerk.emulator.state import EmulatorState, Json, _Table

MAX_LIMIT = 500
DEFAULT_LIMIT = 10


def _page(ids: Sequence[str], offset: int, limit: int, descending: bool) -> Sequence[str]:
    if not descending:
        return ids[offset : offset + limit]
    end = len(ids) - offset
    if end <= 0:
        return []
    return ids[max(0, end - limit) : end][::-1]


def _values(query: dict[str, list[str]], name: str) -> list[str]:
    return query.get(name, []) + query.get(f"{name}[]", [])


def _flag(query: dict[str, list[str]], name: str) -> bool:
    values = query.get(name) or []
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


class ApiRoutes(EmulatorState):
    """Answer one ``GET /v1/…`` request; the caller holds _lock and serialises the answer under it."""

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
