"""Benchmark of the full sync, end to end: the Clerk emulator over loopback HTTP into PostgreSQL.

The emulator runs in a child process (as Clerk would be elsewhere: its JSON encoding does not share this
process's GIL), seeded with ``ClerkEmulator.seed_sample``. This process runs the real
``sync_organizations``, ``sync_profiles`` and ``sync_memberships`` with a real ``ClerkClient`` against a
fresh schema: a first sync, then a resync with nothing changed in Clerk. Each table's wall time is split
by wrapping the functions ``sync.py`` calls (listing = HTTP + JSON + dedupe in ``collect_listing``;
validation; the ``apply_*`` call; deletion reconciliation; the rest is the transaction's commit,
quarantine and the listing-start query). The emulator reports the requests it answered. Peak RSS is the
kernel's high-water mark of this process, reset before each table's sync.

    .venv/bin/python bench/bench_sync.py [--orgs 10000] [--users 50000] [--memberships-per-org 10]
                                         [--database-url URL] [--write]
"""

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import multiprocessing
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection as Pipe
from typing import Any

import sqlalchemy as sa
from common import (
    Section,
    add_database_argument,
    bench_schema,
    machine,
    markdown_table,
    new_parser,
    peak_rss_mib,
    postgres_version,
    rate,
    reset_peak_rss,
    rss_mib,
    run_benchmark,
    seconds,
    server_url,
)

from orgsync_pipeline import sync
from orgsync_pipeline.clerk.client import PAGE_SIZE, ClerkClient
from orgsync_pipeline.settings import Settings
from orgsync_pipeline.store import apply as apply_module
from orgsync_pipeline.store.database import migrated_engine_for
from orgsync_pipeline.store.schema import organization_members, organizations, profiles

PHASES = ("fetch + validate + stage", "merge", "reconcile deletions", "other")
# Parts of the first phase, which interleaves them chunk by chunk (not counted again in "other").
PARTS = ("validation", "COPY to staging")


# ---------------------------------------------------------------------- the emulator process


def serve_emulator(pipe: Pipe, orgs: int, users: int, per_org: int, seed: int) -> None:
    """Child process: seed an emulator, serve it, answer "requests" (new ones since last asked) and "stop"."""
    from orgsync_pipeline.clerk.emulator import ClerkEmulator

    started = time.perf_counter()
    emulator = ClerkEmulator(id_seed=seed)
    emulator.seed_sample(organizations=orgs, users=users, memberships_per_org=per_org, seed=seed)
    seeded = time.perf_counter() - started
    # Sizes read from the emulator's tables directly: its public snapshots deep-copy every record.
    counts = (len(emulator._orgs.rows), len(emulator._users.rows), len(emulator._memberships.rows))
    pipe.send((emulator.start(), emulator.secret_key, seeded, counts))
    seen = 0
    while True:
        message = pipe.recv()
        if message == "requests":
            new = emulator.requests[seen:]
            seen += len(new)
            pipe.send(([(r.path, r.status, r.param("limit")) for r in new], time.process_time()))
        elif message == "stop":
            emulator.stop()
            pipe.send("stopped")
            return


class EmulatorProcess:
    def __init__(self, orgs: int, users: int, per_org: int, seed: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipe, child = context.Pipe()
        self.process = context.Process(
            target=serve_emulator, args=(child, orgs, users, per_org, seed), daemon=True
        )
        self.process.start()
        self.api_url, self.secret_key, self.seed_seconds, self.counts = self.pipe.recv()

    def requests(self) -> tuple[list[tuple[str, int, str | None]], float]:
        """The requests answered since the last call, and the emulator process's CPU seconds so far."""
        self.pipe.send("requests")
        return self.pipe.recv()

    def stop(self) -> None:
        self.pipe.send("stop")
        self.pipe.recv()
        self.process.join(timeout=10)


# ---------------------------------------------------------------------- instrumentation


@contextlib.contextmanager
def phase_timers(into: dict[str, float]) -> Iterator[None]:
    """Time the functions sync.py calls, by patching them in this process for the duration."""

    def timed(phase: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                into[phase] = into.get(phase, 0.0) + time.perf_counter() - started

        return wrapper

    patches = [
        (sync, "stage_listing", PHASES[0]),
        (sync, "validate_memberships", PARTS[0]),
        (sync, "copy_rows", PARTS[1]),
        (apply_module, "apply_listed", PHASES[1]),
        (apply_module, "apply_listed_memberships", PHASES[1]),
        (sync, "reconcile_soft_deletes", PHASES[2]),
        (sync, "reconcile_memberships", PHASES[2]),
    ]
    originals = [(module, name, getattr(module, name)) for module, name, _ in patches]
    listings = dict(sync.SOFT_DELETED_LISTINGS)  # full_sync looks organizations and profiles up here
    for module, name, phase in patches:
        setattr(module, name, timed(phase, getattr(module, name)))
    for table, spec in listings.items():
        sync.SOFT_DELETED_LISTINGS[table] = dataclasses.replace(spec, validate=timed(PARTS[0], spec.validate))
    try:
        yield
    finally:
        for module, name, original in originals:
            setattr(module, name, original)
        sync.SOFT_DELETED_LISTINGS.update(listings)


@dataclass
class TableRun:
    sync_name: str
    table: str
    report: sync.SyncReport
    wall: float
    phases: dict[str, float]
    requests: list[tuple[str, int, str | None]]
    peak_rss: float
    rss_before: float
    row_count: int
    emulator_cpu: float


def run_table(
    sync_name: str,
    function: Callable[..., sync.SyncReport],
    table: sa.Table,
    engine: sa.Engine,
    clerk: ClerkClient,
    emulator: EmulatorProcess,
    settings: Settings,
    log: logging.Logger,
) -> TableRun:
    phases: dict[str, float] = {}
    _, emulator_cpu_before = emulator.requests()  # also drops earlier requests
    rss_before = rss_mib()
    reset_peak_rss()
    with phase_timers(phases):
        started = time.perf_counter()
        report = function(engine, clerk, settings, log)
        wall = time.perf_counter() - started
    peak = peak_rss_mib()
    phases["other"] = wall - sum(phases.get(p, 0.0) for p in PHASES[:-1])
    requests, emulator_cpu = emulator.requests()
    with engine.connect() as conn:
        row_count = conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
    return TableRun(
        sync_name,
        table.name,
        report,
        wall,
        phases,
        requests,
        peak,
        rss_before,
        row_count,
        emulator_cpu - emulator_cpu_before,
    )


# ---------------------------------------------------------------------- the floor


def measure_floor(engine: sa.Engine, clerk: ClerkClient) -> dict[str, float]:
    """Seconds to fetch every page of each listing and COPY its records (id and JSON) into an unindexed
    temporary table: what any full sync must at least spend, with the same client and database."""
    listings = {
        "organizations": clerk.iter_organization_pages,
        "profiles": clerk.iter_user_pages,
        "organization_members": clerk.iter_membership_pages,
    }
    floors: dict[str, float] = {}
    for table, pages in listings.items():
        with engine.connect() as conn:
            conn.exec_driver_sql("CREATE TEMPORARY TABLE floor_rows (id text, record jsonb)")
            started = time.perf_counter()
            for page in pages():
                rows = [(record.get("id"), json.dumps(record)) for record in page]
                sync.copy_rows(conn, FLOOR_TABLE, rows)
                conn.commit()
            floors[table] = time.perf_counter() - started
            conn.invalidate()
    return floors


FLOOR_TABLE = sa.Table("floor_rows", sa.MetaData(), sa.Column("id", sa.Text), sa.Column("record", sa.Text))


# ---------------------------------------------------------------------- the benchmark


def run(args: argparse.Namespace) -> Section:
    started = time.perf_counter()
    tenth = None
    if args.with_tenth:
        small = argparse.Namespace(**{**vars(args), "orgs": args.orgs // 10, "users": args.users // 10})
        tenth = measure(small)
    runs, floors, emulator, pg_version = measure(args)
    section = render(args, runs, floors, emulator, pg_version, time.perf_counter() - started)
    if tenth is not None:
        peak = max(r.peak_rss for r in runs)
        tenth_peak = max(r.peak_rss for r in tenth[0])
        section.body += (
            f"\nMemory against size, in this run: peak RSS {peak:,.0f} MiB at this size and "
            f"{tenth_peak:,.0f} MiB at one tenth ({tenth[2].counts[2]:,} memberships): "
            f"ratio {peak / tenth_peak:.2f} "
            f"(target ≤ 1.2: {'met' if peak <= 1.2 * tenth_peak else 'missed'}); "
            f"target ≤ 400 MiB: {'met' if peak <= 400 else 'missed'}.\n"
        )
    return section


def measure(
    args: argparse.Namespace,
) -> tuple[list[TableRun], dict[str, float], EmulatorProcess, str]:
    """The floor, a first sync and a no-change resync of all three tables at one size."""
    emulator = EmulatorProcess(args.orgs, args.users, args.memberships_per_org, args.seed)
    print(f"emulator seeded with {emulator.counts} in {emulator.seed_seconds:.1f}s at {emulator.api_url}")
    logging.basicConfig(level=logging.WARNING)
    log = logging.getLogger("bench_sync")
    settings = Settings()
    runs: list[TableRun] = []
    try:
        server = server_url(args.database_url)
        with (
            bench_schema(server) as url,
            ClerkClient(emulator.secret_key, emulator.api_url, rate_limit=args.rate_limit) as clerk,
        ):
            engine = migrated_engine_for(url)
            pg_version = postgres_version(url)
            floors = measure_floor(engine, clerk)
            print(f"floor (fetch every page + COPY): {floors}")
            for sync_name in ("first sync", "no-change resync"):
                for function, table in (
                    (sync.sync_organizations, organizations),
                    (sync.sync_profiles, profiles),
                    (sync.sync_memberships, organization_members),
                ):
                    result = run_table(sync_name, function, table, engine, clerk, emulator, settings, log)
                    runs.append(result)
                    print(
                        f"{sync_name} {table.name}: {result.wall:.2f}s, "
                        f"{len(result.requests)} requests, {result.report.metadata()}"
                    )
    finally:
        emulator.stop()
    check(runs, emulator.counts)
    return runs, floors, emulator, pg_version


def check(runs: list[TableRun], counts: tuple[int, int, int]) -> None:
    expected = dict(zip(("organizations", "profiles", "organization_members"), counts, strict=True))
    for run_ in runs:
        report = run_.report
        assert run_.row_count == expected[run_.table], (run_.table, run_.row_count)
        assert report.fetched == expected[run_.table], report
        assert report.quarantined == report.deleted == 0, report
        if run_.sync_name == "first sync":
            assert report.inserted == report.fetched, report
        else:
            assert report.inserted == report.updated == 0, report
        assert all(status == 200 for _, status, _ in run_.requests), run_.requests


def render(
    args: argparse.Namespace,
    runs: list[TableRun],
    floors: dict[str, float],
    emulator: EmulatorProcess,
    pg_version: str,
    total: float,
) -> Section:
    main_rows = []
    for r in runs:
        paths = Counter(path for path, _, _ in r.requests)
        listing_requests = sum(1 for _, _, limit in r.requests if limit == str(PAGE_SIZE))
        main_rows.append(
            [
                r.sync_name,
                r.table,
                f"{r.report.fetched:,}",
                seconds(r.wall),
                rate(r.report.fetched, r.wall),
                f"{r.report.inserted:,} / {r.report.updated:,} / {r.report.unchanged:,}",
                f"{len(r.requests)} ({listing_requests} with limit={PAGE_SIZE})",
                ", ".join(f"{path}: {n}" for path, n in paths.most_common()),
                f"{r.peak_rss:,.0f} (from {r.rss_before:,.0f})",
            ]
        )
    table = markdown_table(
        [
            "sync",
            "table",
            "records",
            "seconds",
            "records/s",
            "inserted / updated / unchanged",
            "HTTP requests",
            "requests by path",
            "peak RSS MiB",
        ],
        main_rows,
    )
    split_rows = []
    for r in runs:
        split_rows.append(
            [
                r.sync_name,
                r.table,
                *(
                    f"{seconds(r.phases.get(p, 0.0))} ({r.phases.get(p, 0.0) / r.wall:.0%})"
                    for p in PHASES + PARTS
                ),
                seconds(r.emulator_cpu),
            ]
        )
    split = markdown_table(
        ["sync", "table", *(f"{p} s" for p in PHASES), *(f"of which {p} s" for p in PARTS), "emulator CPU s"],
        split_rows,
    )
    totals = []
    for sync_name in ("first sync", "no-change resync"):
        selected = [r for r in runs if r.sync_name == sync_name]
        wall = sum(r.wall for r in selected)
        records = sum(r.report.fetched for r in selected)
        totals.append(f"{sync_name}: {wall:.1f}s for {records:,} records ({records / wall:,.0f} records/s)")
    floor = sum(floors.values())
    for sync_name, target in (("first sync", 2.0), ("no-change resync", 1.5)):
        wall = sum(r.wall for r in runs if r.sync_name == sync_name)
        verdict = "met" if wall <= target * floor else "missed"
        totals.append(
            f"{sync_name} / floor = {wall / floor:.2f} (target ≤ {target}: {verdict}; floor {floor:.1f}s)"
        )
    floor_parts = ", ".join(f"{t} {v:.1f}s" for t, v in floors.items())
    n_orgs, n_users, n_memberships = emulator.counts
    body = f"""### Results

Emulator seeded with {n_orgs:,} organizations, {n_users:,} users and {n_memberships:,} memberships
({args.memberships_per_org} per organization) in a child process in {emulator.seed_seconds:.1f}s.
The client may send {args.rate_limit:,} requests per 10 s (`--rate-limit`).
{pg_version}. {machine()}. Benchmark wall time {total:.0f}s.

The floor is fetching every page of the three listings with the same client and `COPY`ing each
record (id and JSON) into an unindexed temporary table: {floor_parts}.

All three tables: {"; ".join(totals)}.

{table}

Where each table's time goes (seconds, share of that table's wall time):

{split}
"""
    return Section("sync", body)


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--orgs", type=int, default=10_000)
    parser.add_argument("--users", type=int, default=50_000)
    parser.add_argument("--memberships-per-org", type=int, default=10)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument(
        "--rate-limit",
        type=int,
        default=1000,
        help="requests per 10 s the client may send (default 1,000: a production instance's limit)",
    )
    parser.add_argument(
        "--with-tenth",
        action="store_true",
        help="first run the benchmark at one tenth of the organizations and users, to compare peak memory",
    )
    add_database_argument(parser)
    return run_benchmark(parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
