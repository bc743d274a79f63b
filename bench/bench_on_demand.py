"""On-demand sync latency: ``POST /sync/organizations/{id}`` and ``POST /sync/me`` over real HTTP.

The receiver (uvicorn on loopback, in this process) verifies an RS256 session token minted by the Clerk
emulator (JWKS fetched once, then cached), fetches the organization and every page of its memberships
(500 per page) from the emulator, validates and applies them, then reconciles deletions. For each
organization size three cases are timed, each as the client sees it (request sent to answer read):

- **first**: the organization and all its members are new (every row inserted; the JWKS, migrations and
  pools are warmed up by one unmeasured ``/sync/me`` before);
- **no change**: the same again, several times (nothing may be written): median and max;
- **one change**: one member's role changed and one member removed in Clerk since the last sync.

``/sync/me`` is timed for a user in ``--user-orgs`` organizations.

    .venv/bin/python bench/bench_on_demand.py [--sizes 10 500 5000] [--repeat 5] [--write]
"""

import argparse
import base64
import os
import statistics
import sys
import time
from collections.abc import Callable

import httpx
import sqlalchemy as sa
from common import (
    Section,
    add_database_argument,
    bench_schema,
    machine,
    markdown_table,
    new_parser,
    run_benchmark,
    server_url,
)

from orgsync_pipeline.clerk.emulator import ClerkEmulator
from orgsync_pipeline.settings import load_settings
from orgsync_pipeline.store.database import migrated_engine_for
from orgsync_pipeline.store.schema import organization_members
from orgsync_pipeline.webhooks import create_app, serve_in_thread


def timed_post(url: str, token: str) -> tuple[float, dict]:
    started = time.perf_counter()
    response = httpx.post(url, headers={"Authorization": f"Bearer {token}"}, timeout=300)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{url} answered {response.status_code}: {response.text}")
    return elapsed, response.json()


def org_cases(
    emulator: ClerkEmulator, base: str, size: int, repeat: int, count: Callable[[str], int]
) -> list:
    admin = emulator.create_user("Admin", f"Of{size}", f"admin{size}@example.com")["id"]
    org_id = emulator.create_organization(f"Org of {size}")["id"]
    emulator.create_membership(org_id, admin, "org:admin")
    users = [
        emulator.create_user("M", f"{size}x{i}", f"m{size}x{i}@example.com")["id"] for i in range(size - 1)
    ]
    for user_id in users:
        emulator.create_membership(org_id, user_id)
    url = f"{base}/sync/organizations/{org_id}"

    def token() -> str:
        return emulator.session_token(admin, org_id)

    before = len(emulator.requests)
    first, body = timed_post(url, token())
    clerk_requests = (
        len(emulator.requests) - before - sum(1 for r in emulator.requests[before:] if r.path == "/jwks")
    )
    assert body["counts"]["organization_members"]["inserted"] == size, body
    unchanged = [timed_post(url, token())[0] for _ in range(repeat)]
    emulator.update_membership(org_id, users[0], role="org:admin")
    emulator.delete_membership(org_id, users[1])
    changed, body = timed_post(url, token())
    counts = body["counts"]["organization_members"]
    assert (counts["updated"], counts["deleted"]) == (1, 1), counts
    assert count(org_id) == size - 1
    return [
        f"{size:,}",
        clerk_requests,
        f"{first:,.0f}",
        f"{statistics.median(unchanged):,.0f}",
        f"{max(unchanged):,.0f}",
        f"{changed:,.0f}",
    ]


def run(args: argparse.Namespace) -> Section:
    with bench_schema(server_url(args.database_url)) as database_url, ClerkEmulator() as emulator:
        os.environ.update(
            CLERK_SECRET_KEY=emulator.secret_key,
            CLERK_API_URL=emulator.api_url,
            DATABASE_URL=database_url,
            CLERK_WEBHOOK_SECRET="whsec_" + base64.b64encode(os.urandom(24)).decode(),
            ORGSYNC_WEBHOOK_APPLY="sensor",
            ORGSYNC_SYNC_RATE_PER_MINUTE="100000",
        )
        engine = migrated_engine_for(database_url)

        def count(org_id: str) -> int:
            with engine.connect() as conn:
                return conn.execute(
                    sa.select(sa.func.count())
                    .select_from(organization_members)
                    .where(organization_members.c.organization_id == org_id)
                ).scalar_one()

        with serve_in_thread(create_app(load_settings())) as base:
            # Warm-up, not measured: migrations, the emulator's key pair, the JWKS fetch, connection pools.
            warm = emulator.create_user("Warm", "Up", "warm@example.com")["id"]
            timed_post(f"{base}/sync/me", emulator.session_token(warm))
            rows = [org_cases(emulator, base, size, args.repeat, count) for size in args.sizes]
            me_row = me_case(emulator, base, args.user_orgs, args.repeat)
    table = markdown_table(
        [
            "members",
            "Clerk requests",
            "first (ms)",
            "no change p50 (ms)",
            "no change max (ms)",
            "one change (ms)",
        ],
        rows,
    )
    me_table = markdown_table(["organizations", "first (ms)", "no change p50 (ms)"], [me_row])
    body = f"""Machine: {machine()}. Receiver and client in one process (loopback HTTP, uvicorn).

`POST /sync/organizations/{{id}}`; "Clerk requests" counts the emulator requests of the first sync
(organization, membership pages), the JWKS not included:

{table}

`POST /sync/me` for a user in several organizations:

{me_table}
"""
    return Section("on_demand", body)


def me_case(emulator: ClerkEmulator, base: str, orgs: int, repeat: int) -> list:
    user = emulator.create_user("Busy", "User", "busy@example.com")["id"]
    for i in range(orgs):
        org_id = emulator.create_organization(f"Busy org {i}")["id"]
        emulator.create_membership(org_id, user, "org:member")
    first, body = timed_post(f"{base}/sync/me", emulator.session_token(user))
    assert body["counts"]["organization_members"]["inserted"] == orgs, body
    unchanged = [timed_post(f"{base}/sync/me", emulator.session_token(user))[0] for _ in range(repeat)]
    return [orgs, f"{first:,.0f}", f"{statistics.median(unchanged):,.0f}"]


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 500, 5000])
    parser.add_argument("--repeat", type=int, default=5, help="no-change syncs per size")
    parser.add_argument("--user-orgs", type=int, default=20)
    add_database_argument(parser)
    return run_benchmark(parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
