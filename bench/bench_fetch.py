"""Listing at Clerk's rate limit: concurrent pages under the process-wide limiter, against the bound.

The Clerk emulator (a child process) answers every request after ``--latency`` seconds and enforces the
rate limit itself (a 429 with ``Retry-After`` past it), as Clerk does. ``ClerkClient.iter_organization_pages``
lists ``--pages`` pages of ``--page-size`` organizations at a production instance's limit (1,000 requests per
10 s) and at a development instance's (100 per 10 s). The bound is what the limit allows at best: the first
window's burst at once, then the limit's rate, so (pages - limit) / (limit / 10 s). The sequential client
(one page after another, ``max_in_flight=1``) runs in the same run, for at most ``--sequential-seconds``;
its time for the whole listing is projected from its pages per second.

    .venv/bin/python bench/bench_fetch.py [--pages 3000 300] [--latency 0.1] [--write]
"""

import argparse
import multiprocessing
import sys
import time
from multiprocessing.connection import Connection as Pipe
from typing import Any

import common

from orgsync_pipeline.clerk.client import ClerkClient
from orgsync_pipeline.clerk.paging import DEFAULT_MAX_IN_FLIGHT

TARGET_RATIO = 1.15
LIMITS = {"production (sk_live_)": 1000, "development (sk_test_)": 100}
WINDOW_SECONDS = 10.0


def serve_emulator(pipe: Pipe, organizations: int, latency: float, limit: int) -> None:
    """Child process: an emulator with ``organizations``, a delay on every listing and Clerk's rate limit."""
    from orgsync_pipeline.clerk.emulator import ClerkEmulator

    emulator = ClerkEmulator(rate_limit=limit, rate_window_seconds=WINDOW_SECONDS)
    for i in range(organizations):
        emulator.create_organization(f"Organization {i}")
    emulator.inject_fault("/organizations", 200, times=-1, delay_seconds=latency)
    pipe.send((emulator.start(), emulator.secret_key))
    pipe.recv()
    too_many = sum(1 for request in emulator.requests if request.status == 429)
    emulator.stop()
    pipe.send(too_many)


def list_all(api_url: str, key: str, limit: int, page_size: int, max_in_flight: int, budget: float) -> Any:
    """Pages listed and seconds taken, stopping after ``budget`` seconds."""
    started = time.perf_counter()
    pages = 0
    with ClerkClient(
        key, api_url, rate_limit=limit, page_size=page_size, max_in_flight=max_in_flight
    ) as client:
        for _ in client.iter_organization_pages():
            pages += 1
            if time.perf_counter() - started > budget:
                break
    return pages, time.perf_counter() - started


def one_rate(args: argparse.Namespace, name: str, limit: int, pages: int) -> list[object]:
    context = multiprocessing.get_context("spawn")
    pipe, child = context.Pipe()
    process = context.Process(
        target=serve_emulator, args=(child, pages * args.page_size, args.latency, limit), daemon=True
    )
    process.start()
    api_url, key = pipe.recv()
    try:
        listed, seconds = list_all(api_url, key, limit, args.page_size, args.max_in_flight, float("inf"))
        bound = max(0.0, pages - limit) / (limit / WINDOW_SECONDS)
        time.sleep(WINDOW_SECONDS)  # an empty window for the sequential client
        seq_pages, seq_seconds = list_all(api_url, key, limit, args.page_size, 1, args.sequential_seconds)
    finally:
        pipe.send("stop")
        too_many = pipe.recv()
        process.join(timeout=30)
    if listed != pages:
        raise RuntimeError(f"{name}: listed {listed} pages of {pages}")
    projected = pages / (seq_pages / seq_seconds)
    ratio = seconds / bound if bound else float("nan")
    print(f"{name}: {pages} pages in {seconds:.1f}s (bound {bound:.1f}s), sequential ~{projected:.0f}s")
    return [
        name,
        f"{limit:,}",
        f"{pages:,}",
        f"{bound:.1f}",
        f"{seconds:.1f}",
        f"{ratio:.2f}",
        "met" if ratio <= TARGET_RATIO else "missed",
        f"{projected:.0f} ({seq_pages} pages in {seq_seconds:.0f} s)",
        f"{seconds and projected / seconds:.1f}x",
        too_many,
    ]


def run(args: argparse.Namespace) -> common.Section:
    rows = [
        one_rate(args, name, limit, pages)
        for (name, limit), pages in zip(LIMITS.items(), args.pages, strict=True)
    ]
    table = common.markdown_table(
        ["instance", "requests / 10 s", "pages", "bound s", "concurrent s", "÷ bound",
         f"target ≤ {TARGET_RATIO}", "sequential s (projected)", "concurrent speed-up", "429s"],
        rows,
    )  # fmt: skip
    body = f"""### Results

{common.machine()}. {args.latency * 1000:.0f} ms per request, {args.page_size} records per page; the client
fetches up to {args.max_in_flight} pages ahead once the listing's total is known.

{table}
"""
    return common.Section("fetch", body)


def main(argv: list[str] | None = None) -> int:
    parser = common.new_parser(__doc__)
    parser.add_argument("--pages", type=int, nargs=2, default=[3000, 300], help="pages at each rate")
    parser.add_argument("--page-size", type=int, default=10)
    parser.add_argument("--latency", type=float, default=0.1)
    parser.add_argument("--sequential-seconds", type=float, default=20.0)
    parser.add_argument("--max-in-flight", type=int, default=DEFAULT_MAX_IN_FLIGHT, help="pages ahead")
    common.add_database_argument(parser)
    return common.run_benchmark(parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
