"""Run every benchmark and rewrite BENCHMARKS.md.

Each ``bench/bench_*.py`` runs in its own process (so one benchmark's memory and caches do not colour
the next, and peak RSS is per benchmark) with ``--write``, which fills its section of BENCHMARKS.md. This
script first rewrites the file's fixed text (what each benchmark does and how to read it), keeping
sections written by benchmarks it does not know, then records the machine and the total runtime. A
benchmark that takes none of ``common``'s options (it only prints) runs without them, and what it printed
becomes its section. Sections of benchmarks skipped or failed this time keep their last results.

    .venv/bin/python bench/run_all.py [--database-url URL] [--quick] [--skip NAME ...] [--only NAME ...]
"""

import argparse
import ast
import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from common import (
    BENCHMARKS_MD,
    REPO,
    Section,
    add_database_argument,
    machine,
    postgres_version,
    section_placeholder,
    server_url,
    write_section,
)

BENCH = Path(__file__).resolve().parent

# Known benchmarks, in the order they run, with the arguments of a --quick smoke run.
KNOWN = {
    "bench_apply": ["--memberships", "20000", "--orgs", "2000", "--profiles", "10000", "--sample", "500"],
    "bench_validation": ["--orgs", "2000", "--users", "10000", "--repeat", "1"],
    "bench_sync": ["--orgs", "1000", "--users", "5000"],
    "bench_webhook_freshness": ["--events", "3"],
    "bench_on_demand": ["--sizes", "10", "500", "--repeat", "2"],
    "bench_push": ["--quick"],
    "bench_receiver_import": ["--rounds", "3"],
    "bench_receiver": ["--events", "1000", "--seconds", "5", "--workers", "1"],
    "bench_fetch": ["--pages", "1100", "120", "--sequential-seconds", "3"],
}

# The fixed text of BENCHMARKS.md; {name} marks where the section written by a benchmark goes.
TEMPLATE = BENCH / "benchmarks_template.md"

# Fixed text of the benchmarks the template does not (yet) describe, appended after it in this order.
EXTRA_TEXT = {
    "on_demand": """## 5. On-demand sync: `POST /sync/organizations/{{id}}` and `POST /sync/me`

`bench/bench_on_demand.py`. The receiver (uvicorn on loopback, in the benchmark's process) verifies a
session token the Clerk emulator minted, fetches the organization and every page of its memberships from
the emulator, validates and applies them, and reconciles deletions; each case is timed as the client
sees it, from the request sent to the answer read.

{on_demand}
""",
    "push": """## 6. The webhook push path: latency, receiver throughput, apply throughput

`bench/bench_push.py`. The Clerk emulator signs and delivers `organization.created` webhooks (one
delivery at a time, in order, as Svix does per endpoint) to `orgsync serve-webhooks` (a child process,
uvicorn), which commits each to the inbox and answers. **Inline** (`ORGSYNC_WEBHOOK_APPLY=inline`): the
receiver's own worker applies it. **Sensor**: `dagster-daemon run -w workspace.yaml` with the shipped
`deploy/dagster.yaml` (run storage in a throwaway PostgreSQL database, queued run coordinator) ticks
`clerk_webhook_sensor` every 5 s, which launches `clerk_webhook_apply`. Latency runs from the 2xx as the
emulator saw it to the organization's row being visible to a poller reading `organizations` every 20 ms
(the last column, `webhook_inbox.applied_at - received_at` on the database's clock, is the same path
seen from the inbox, without the commit and the poll). "delivered/s" is the rate the emulator actually
delivered at: the steady load is paced at 50 events/s, bursts go as fast as the receiver answers.
Receiver throughput: mixed events (organizations, users, memberships; creations, updates, deletions)
POSTed by concurrent senders in the benchmark process to an inline and a sensor-mode receiver, one
after the other, each on a fresh schema; events/s answered 2xx, every one checked stored. Apply
throughput: a backlog of mixed events stored pending, then drained by `events.apply_pending_events`
(as a run and as the inline worker batch them) and by a `clerk_webhook_apply` run in process, each
within a time budget; a cProfile of one drain shows where the time goes. Everything runs in a database
of the benchmark's own: the inbox's apply lock is a database-wide advisory lock, which tests draining
an inbox in another schema of the same database would otherwise hold.

{push}

How to read it: an event's latency is its wait in the inbox behind the events before it, plus its
batch's apply, plus the commit. When events arrive faster than the apply path drains them (compare
"delivered/s" with the apply rate in the last table), the queue, and the latency with it, grows for as
long as the load lasts. The inbox column stops at the event's own `applied_at`, inside its batch's
transaction; the row becomes visible only when the whole batch commits, so the poll column is higher by
up to one batch's apply time. Sensor mode adds the wait for the next tick (0 to 5 s), the run queue's
dequeue (up to 1 s) and a run's start-up (a new process that imports Dagster and orgsync). The inline
receiver applies in the same process (one GIL) and on the same 2 cores as it ingests, so what inline
apply costs ingest grows with the apply's CPU per event.
""",
    "receiver": """## 7. Receiver throughput against its floor

`bench/bench_receiver.py`. Verified, durably stored events per second on loopback, in one run: the
**floor** is a Starlette app that verifies the Svix signature with `svix` and runs one `INSERT` per event
(a pooled connection, one transaction each), under uvicorn; against it, `orgsync serve-webhooks --apply
sensor --workers N` (it only stores) and the default inline mode (it also applies, in the same
processes). A load generator in its own process sends `organization.created` deliveries signed
beforehand over keep-alive HTTP/1.1 connections it writes and parses by hand, bounded in count and in
time; latency runs from writing a request to reading its whole answer. Each receiver runs on a fresh
schema, after a warm-up; every answer is checked 2xx and every event stored. The floor runs first and
last, so the drift of the machine in between shows.

{receiver}

How to read it: the generator and the receivers share the machine's two cores, so a second worker
process competes with the generator as much as it adds capacity; the floor with as many workers shows
what that costs any receiver. The p99 of every receiver, the floor's included, is queueing behind 32
connections on two cores. A sampling profile (py-spy) of a receiver storing one event per transaction
showed its worker threads waiting on the database (65% of samples in the store: the `INSERT … RETURNING`,
the commit, and waiting for a pooled connection); the same table took 1,650 events/s from 10 threads
inserting one event per transaction and 7,300 events/s in one thread inserting 32 per statement. So each
receiver process now commits the events of concurrent deliveries together (`receiver_inbox.py`: whatever
arrived while the previous batch was committing, up to 100, two batches in flight; every 2xx still waits
for the commit of its own event), which is why it passes a floor that commits each event on its own.
""",
    "fetch": """## 8. Listing at Clerk's rate limit

`bench/bench_fetch.py`. The Clerk emulator (a child process) answers each listing request after 100 ms and
enforces the limit itself, answering 429 past it; `ClerkClient.iter_organization_pages` lists many small
pages at a production instance's limit and at a development one's. The **bound** is the least time the
limit allows: the first window's budget at once, then the limit's rate, `(pages - limit) / (limit / 10
s)`. A sequential client (one page after another) runs in the same run for a bounded time; its time for
the whole listing is projected from its pages per second.

{fetch}

How to read it: the limiter never lets more than the limit into any window of 10.2 s, so a listing sends
the first window's budget as fast as its requests in flight allow (32 pages ahead at 100 ms each: up to
320 requests/s), waits for the window to move, and repeats; with a production key the last window's
1,000 requests then take about 3 s to send, which is what separates the listing from the bound (16
pages ahead took 27.1 s, 1.36 times the bound), plus the limiter's 0.2 s margin per window. 48 pages
ahead measured no better than 32 in the same session (24.4 s against 24.0 s, where 48 in flight at
100 ms would allow 22.5 s): the emulator and the client, Python processes sharing the two cores, do not
get past about 320 requests/s here. Against Clerk itself, `max_in_flight` (the clerk resource,
`ORGSYNC_CLERK_MAX_IN_FLIGHT`) trades about 2 MB of memory per page in flight for a shorter burst.
""",
}


def scripts(only: list[str], skip: list[str]) -> list[Path]:
    found = sorted(BENCH.glob("bench_*.py"))
    order = {name: i for i, name in enumerate(KNOWN)}
    found.sort(key=lambda path: (order.get(path.stem, len(order)), path.stem))
    selected = [path for path in found if path.stem not in skip]
    if only:
        selected = [path for path in selected if path.stem in only]
    return selected


def foreign_sections(text: str, known: set[str]) -> list[str]:
    """Sections of the current BENCHMARKS.md written by benchmarks this script has no text for."""
    pattern = re.compile(r"<!-- bench:([\w-]+):begin -->.*?<!-- bench:\1:end -->", re.DOTALL)
    return [match.group(0) for match in pattern.finditer(text) if match.group(1) not in known]


def rewrite_fixed_text() -> None:
    text = TEMPLATE.read_text()
    for name, extra in EXTRA_TEXT.items():
        if "{" + name + "}" not in text:  # the template describes it itself once it has its marker
            text = text.rstrip() + "\n\n" + extra.replace("{{", "{").replace("}}", "}")
    known = {"run", "apply", "validation", "sync", "freshness", *EXTRA_TEXT}
    kept = foreign_sections(BENCHMARKS_MD.read_text(), known) if BENCHMARKS_MD.exists() else []
    existing = BENCHMARKS_MD.read_text() if BENCHMARKS_MD.exists() else ""
    for name in known:
        text = text.replace("{" + name + "}", current_section(existing, name))
    if kept:
        text += "\n" + "\n\n".join(kept) + "\n"
    BENCHMARKS_MD.write_text(text)


def current_section(text: str, name: str) -> str:
    """The section as the last run wrote it (a benchmark skipped or failed this time keeps it), else a
    placeholder."""
    match = re.search(rf"<!-- bench:{name}:begin -->.*?<!-- bench:{name}:end -->", text, re.DOTALL)
    return match.group(0) if match else section_placeholder(name)


def writes_own_section(script: Path) -> bool:
    """Whether the script takes the shared options (``--write``, ``--database-url``) of ``common``."""
    return "add_database_argument" in script.read_text()


def run_one(script: Path, server: str, env: dict[str, str], quick: bool, timeout: float) -> str:
    """Run one benchmark; one that writes no section of its own gets its printed output recorded in a
    section named after it."""
    own = writes_own_section(script)
    command = [sys.executable, str(script)] + (["--write", "--database-url", server] if own else [])
    if quick:
        command += KNOWN.get(script.stem, [])
    try:
        outcome = subprocess.run(
            command, cwd=REPO, env=env, timeout=timeout, check=False, capture_output=not own, text=True
        )
    except subprocess.TimeoutExpired:
        return f"timed out after {timeout:.0f}s"
    if not own:
        print(outcome.stdout, end="")
        print(outcome.stderr, end="", file=sys.stderr)
        if outcome.returncode == 0:
            write_section(Section(script.stem.removeprefix("bench_"), printed_output(script, outcome.stdout)))
    return "ok" if outcome.returncode == 0 else f"failed (exit {outcome.returncode})"


def printed_output(script: Path, stdout: str) -> str:
    """The section of a benchmark that only prints: what it measures (its docstring's first paragraph),
    then its output as it printed it."""
    doc = ast.get_docstring(ast.parse(script.read_text())) or ""
    about = doc.split("\n\n")[0].replace("\n", " ")
    return f"### `bench/{script.name}`\n\n{about}\n\n```\n{stdout.strip()}\n```"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_database_argument(parser)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not a measurement")
    parser.add_argument("--only", nargs="*", default=[], help="run only these (e.g. bench_apply)")
    parser.add_argument("--skip", nargs="*", default=[], help="do not run these")
    parser.add_argument("--timeout", type=float, default=900, help="seconds allowed per benchmark")
    args = parser.parse_args(argv)

    started = time.perf_counter()
    server = server_url(args.database_url)  # also starts the embedded server when needed
    pg_version = postgres_version(server)
    rewrite_fixed_text()
    env = {**os.environ, "ORGSYNC_BENCH_DATABASE_URL": server}
    results: list[tuple[str, str, float]] = []
    for script in scripts(args.only, args.skip):
        print(f"\n=== {script.name}", flush=True)
        began = time.perf_counter()
        status = run_one(script, server, env, args.quick, args.timeout)
        results.append((script.name, status, time.perf_counter() - began))
        print(f"=== {script.name}: {status} in {results[-1][2]:.0f}s", flush=True)

    total = time.perf_counter() - started
    runs = ", ".join(
        f"`{name}` {seconds:.0f}s" + ("" if status == "ok" else f" ({status})")
        for name, status, seconds in results
    )
    quick = " **Quick smoke run (`--quick`): sizes too small to mean anything.**" if args.quick else ""
    body = (
        f"Last run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `bench/run_all.py` "
        f"in {total:.0f}s ({runs}).{quick}\n"
        f"Machine: {machine()}. {pg_version}."
    )
    write_section(Section("run", body))
    failed = [name for name, status, _ in results if status != "ok"]
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
