"""Benchmark of validation (pandera) on Clerk-shaped records from the emulator.

The emulator is seeded in process (no HTTP) and its organizations, users and memberships are taken as
plain dicts, the shapes ``GET /organizations``, ``/users`` and ``/organization_memberships`` serve. Each
``validate_*`` call is timed whole; the time inside pandera's ``DataFrameSchema.validate`` is timed
separately by wrapping it in this process (the rest is flattening, the DataFrame and building rows).
Each case runs ``--repeat`` times after a ``gc.collect()``; the median is reported with the range.

    .venv/bin/python bench/bench_validation.py [--orgs 20000] [--users 100000] [--memberships-per-org 10]
                                               [--invalid-fraction 0.01] [--write]
"""

import argparse
import contextlib
import functools
import gc
import random
import sys
import time
from collections.abc import Iterator
from typing import Any

import pandera.pandas as pa
from common import (
    Section,
    machine,
    markdown_table,
    new_parser,
    rate,
    run_benchmark,
    seconds,
)

from orgsync_pipeline.clerk.emulator import ClerkEmulator
from orgsync_pipeline.settings import DEFAULT_ROLE_MAP
from orgsync_pipeline.validation import validate_memberships, validate_organizations, validate_profiles


@contextlib.contextmanager
def pandera_timer(into: dict[str, float]) -> Iterator[None]:
    """Accumulate the wall time of every ``DataFrameSchema.validate`` call into ``into["pandera"]``."""
    original = pa.DataFrameSchema.validate

    @functools.wraps(original)
    def validate(self: pa.DataFrameSchema, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            into["pandera"] = into.get("pandera", 0.0) + time.perf_counter() - started

    pa.DataFrameSchema.validate = validate
    try:
        yield
    finally:
        pa.DataFrameSchema.validate = original


def spoil(records: list[dict[str, Any]], fraction: float, seed: int = 3) -> list[dict[str, Any]]:
    """A copy of ``records`` where ``fraction`` of them carry an unmapped custom role (quarantined)."""
    rng = random.Random(seed)
    spoiled = list(records)
    for i in rng.sample(range(len(records)), int(len(records) * fraction)):
        spoiled[i] = {**records[i], "role": "org:billing"}
    return spoiled


def run(args: argparse.Namespace) -> Section:
    started = time.perf_counter()
    emulator = ClerkEmulator(id_seed=args.seed)
    emulator.seed_sample(
        organizations=args.orgs,
        users=args.users,
        memberships_per_org=args.memberships_per_org,
        seed=args.seed,
    )
    organizations = list(emulator.organizations.values())
    users = list(emulator.users.values())
    memberships = list(emulator.memberships.values())
    spoiled = spoil(memberships, args.invalid_fraction)
    print(f"seeded the emulator and took its records in {time.perf_counter() - started:.1f}s")

    cases = [
        ("organizations", organizations, validate_organizations),
        ("users → profiles", users, validate_profiles),
        (
            "memberships (+ embedded organizations, profile stubs)",
            memberships,
            lambda records: validate_memberships(records, DEFAULT_ROLE_MAP),
        ),
        (
            f"memberships, {args.invalid_fraction:.0%} with an unmapped role",
            spoiled,
            lambda records: validate_memberships(records, DEFAULT_ROLE_MAP),
        ),
    ]
    rows = []
    for name, records, validate in cases:
        runs = []
        for _ in range(args.repeat):
            gc.collect()
            times: dict[str, float] = {}
            with pandera_timer(times):
                began = time.perf_counter()
                result = validate(records)
                elapsed = time.perf_counter() - began
            runs.append((elapsed, times.get("pandera", 0.0)))
        runs.sort()
        elapsed, pandera = runs[len(runs) // 2]
        rows.append(
            [
                name,
                f"{len(records):,}",
                seconds(elapsed),
                f"{runs[0][0]:.2f} to {runs[-1][0]:.2f}",
                rate(len(records), elapsed),
                f"{pandera / elapsed:.0%}",
                f"{len(result.rows):,}",
                f"{len(result.quarantined):,}",
            ]
        )
    total = time.perf_counter() - started
    table = markdown_table(
        [
            "records",
            "count",
            f"seconds (median of {args.repeat})",
            "range",
            "records/s",
            "in pandera validate",
            "valid rows",
            "quarantined",
        ],
        rows,
    )
    body = f"""### Results

{args.orgs:,} organizations, {args.users:,} users, {len(memberships):,} memberships from
`ClerkEmulator.seed_sample` (seed {args.seed}). {machine()}. Benchmark wall time {total:.0f}s
(most of it seeding the emulator and copying its records).

{table}
"""
    return Section("validation", body)


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--orgs", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--memberships-per-org", type=int, default=10)
    parser.add_argument("--invalid-fraction", type=float, default=0.01)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--repeat", type=int, default=3, help="runs per case; the median is reported")
    parser.add_argument("--write", action="store_true", help="rewrite this section of BENCHMARKS.md")
    return run_benchmark(parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
