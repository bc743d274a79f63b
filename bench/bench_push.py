"""The webhook push path: inline and sensor-mode latency, receiver throughput, apply throughput.

The Clerk emulator delivers signed webhooks to ``orgsync serve-webhooks`` (a child process); the
receiver's worker (inline) or ``dagster-daemon`` with ``deploy/dagster.yaml`` (sensor) applies them; a
poller notes when each row becomes visible. Receiver throughput is measured with concurrent senders,
apply throughput by draining a backlog of mixed events. BENCHMARKS.md (section 6) describes each
measurement; everything runs in a throwaway database on the server.

    .venv/bin/python bench/bench_push.py [--quick] [--parts latency sensor throughput apply] [--write]
"""

import argparse
import asyncio
import base64
import contextlib
import cProfile
import io
import json
import logging
import os
import pstats
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import common
import dagster as dg
import httpx
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from orgsync_pipeline.clerk.emulator import ClerkEmulator, svix_headers
from orgsync_pipeline.definitions import defs
from orgsync_pipeline.events import apply_pending_events
from orgsync_pipeline.resources import PostgresResource, SyncPolicyResource, WebhookApplyResource
from orgsync_pipeline.settings import load_settings
from orgsync_pipeline.store import inbox
from orgsync_pipeline.store.database import dispose_engines, engine_for, migrate
from orgsync_pipeline.store.schema import organizations, webhook_inbox

BIN = Path(sys.executable).parent
DEPLOY_DAGSTER_YAML = common.REPO / "deploy" / "dagster.yaml"
POLL_SECONDS = 0.02
WAIT_SECONDS = 180.0
LATENCY_MODES = {
    "inline": "inline (receiver's worker)",
    "sensor": "sensor (dagster-daemon, deploy/dagster.yaml)",
}
TARGETS = {"inline": 0.5, "sensor": 5.0}
TITLES = {
    "inline": "Inline latency (target p95 ≤ 0.5 s), from the receiver's 2xx to the row visible",
    "sensor": "Sensor-mode latency (target p95 ≤ 5 s), same measure",
    "throughput": "Receiver throughput, inline and sensor mode side by side (target: inline costs ≤ 10%)",
    "apply": "Apply throughput from a backlog (target ≥ 2,000 events/s)",
}
WARM_UP = 10  # unmeasured events sent to each receiver first
# Event mix of the throughput and backlog workloads (weights; infeasible picks fall back to creations).
MIX = {
    "organization.created": 10, "user.created": 25, "organizationMembership.created": 40,
    "organization.updated": 5, "user.updated": 8, "organizationMembership.updated": 7,
    "organizationMembership.deleted": 3, "user.deleted": 1, "organization.deleted": 1,
}  # fmt: skip
log = logging.getLogger("bench_push")


def mixed_events(count: int, seed: int) -> list[dict[str, Any]]:
    """``count`` Clerk event envelopes in causal order, as the emulator emits them for its mutations."""
    rng = random.Random(seed)
    clerk = ClerkEmulator(id_seed=seed)
    clerk.stop()  # never started: delivery stays paused, the envelopes only pile up in webhook_events
    clerk.add_webhook_endpoint("http://127.0.0.1:9/unused", "whsec_" + base64.b64encode(b"x" * 24).decode())
    orgs: list[str] = []
    users: list[str] = []
    pairs: list[tuple[str, str]] = []
    kinds, weights = list(MIX), list(MIX.values())
    while len(clerk.webhook_events) < count:
        kind = rng.choices(kinds, weights)[0]
        n = len(clerk.webhook_events)
        if kind == "organization.created" or not orgs:
            orgs.append(clerk.create_organization(f"Org {n}")["id"])
        elif kind == "user.created" or not users:
            users.append(clerk.create_user("U", f"N{n}", f"u{n}@example.com")["id"])
        elif kind == "organizationMembership.created":
            pair = (rng.choice(orgs), rng.choice(users))
            if clerk.get_membership(*pair) is None:
                clerk.create_membership(*pair, rng.choice(["org:member", "org:admin"]))
                pairs.append(pair)
        elif kind == "organization.updated":
            clerk.update_organization(rng.choice(orgs), name=f"Renamed {n}")
        elif kind == "user.updated":
            clerk.update_user(rng.choice(users), first_name=f"F{n}")
        elif pairs and kind == "organizationMembership.updated":
            pair = rng.choice(pairs)
            if clerk.get_membership(*pair) is not None:
                clerk.update_membership(*pair, role=rng.choice(["org:member", "org:admin"]))
        elif pairs and kind == "organizationMembership.deleted":
            pair = pairs.pop(rng.randrange(len(pairs)))
            if clerk.get_membership(*pair) is not None:
                clerk.delete_membership(*pair)
        elif kind == "user.deleted" and len(users) > 10:
            clerk.delete_user(users.pop(rng.randrange(len(users))))
        elif kind == "organization.deleted" and len(orgs) > 10:
            clerk.delete_organization(orgs.pop(rng.randrange(len(orgs))))
    return clerk.webhook_events[:count]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(q * len(ordered)) - 1)]


def migrated(url: str) -> sa.Engine:
    migrate(engine := engine_for(url))
    return engine


def stop_group(process: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def healthy(base: str) -> bool:
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{base}/healthz", timeout=5).status_code == 200
    return False


@contextlib.contextmanager
def receiver_process(url: str, mode: str, log_path: Path) -> Iterator[str]:
    """``orgsync serve-webhooks --apply MODE`` on a free port, on ``url``'s schema; yields its base URL."""
    with socket.socket() as sock:
        port = sock.bind(("127.0.0.1", 0)) or sock.getsockname()[1]
    env = {**os.environ, "DATABASE_URL": url, "ORGSYNC_WEBHOOK_APPLY": mode}
    with log_path.open("a") as out:
        process = subprocess.Popen(
            [str(BIN / "orgsync"), "serve-webhooks", "--port", str(port), "--apply", mode],
            cwd=common.REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    base, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 60
    try:
        while not healthy(base):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the receiver did not start; see {log_path}")
            time.sleep(0.1)
        yield base
    finally:
        stop_group(process)


class Poller:
    """Notes when each organization id first becomes visible in Postgres (reads them all every 20 ms)."""

    def __init__(self, url: str) -> None:
        self.engine = engine_for(url)
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self.engine.connect() as conn:
                found = conn.execute(sa.select(organizations.c.id)).scalars().all()
            now = time.time()
            for org_id in found:
                self.seen.setdefault(org_id, now)
            time.sleep(POLL_SECONDS)

    def wait(self, ids: list[str], timeout: float = WAIT_SECONDS) -> None:
        deadline = time.monotonic() + timeout
        while not all(org_id in self.seen for org_id in ids):
            if time.monotonic() > deadline:
                missing = sum(org_id not in self.seen for org_id in ids)
                raise RuntimeError(f"{missing} of {len(ids)} organizations never became visible")
            time.sleep(0.05)

    def __enter__(self) -> "Poller":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()


def send(clerk: ClerkEmulator, count: int, rate: float | None, label: str) -> list[str]:
    """Create ``count`` organizations (each emits organization.created), at ``rate`` per second or
    as fast as the emulator takes them."""
    ids: list[str] = []
    started = time.perf_counter()
    for i in range(count):
        delay = started + i / rate - time.perf_counter() if rate else 0
        time.sleep(max(0.0, delay))
        ids.append(clerk.create_organization(f"{label} {i}")["id"])
    return ids


def latencies(url: str, clerk: ClerkEmulator, poller: Poller, ids: list[str]) -> dict[str, Any]:
    """Per event: 2xx → visible (poll), and applied_at - received_at (inbox); the delivery rate."""
    ok: dict[str, tuple[float, float]] = {}  # msg id -> (sent, answered)
    for record in clerk.deliveries:
        if record.ok:
            ok.setdefault(record.msg_id, (record.at, record.at + record.elapsed))
    data_id = webhook_inbox.c.payload["data"]["id"].astext
    query = sa.select(
        webhook_inbox.c.svix_id, data_id, webhook_inbox.c.received_at, webhook_inbox.c.applied_at
    ).where(data_id == sa.func.any(sa.bindparam("ids")))
    with engine_for(url).connect() as conn:
        rows = conn.execute(query, {"ids": ids}).all()
    by_org = {row[1]: row for row in rows}
    svix = [by_org[org_id][0] for org_id in ids]
    poll = [poller.seen[org_id] - ok[svix_id][1] for org_id, svix_id in zip(ids, svix, strict=True)]
    box = [(by_org[org_id][3] - by_org[org_id][2]).total_seconds() for org_id in ids]
    span = max(ok[svix_id][1] for svix_id in svix) - min(ok[svix_id][0] for svix_id in svix)
    return {"poll": poll, "inbox": box, "rate": len(ids) / span if span > 0 else float("nan")}


def latency_rounds(
    url: str, base: str, secret: str, steady: int, bursts: int, burst_size: int, label: str
) -> dict[str, dict[str, Any]]:
    """The steady round, then each burst; a warm-up event first (not measured)."""
    clerk = ClerkEmulator()
    clerk.add_webhook_endpoint(f"{base}/webhooks/clerk", secret)
    results: dict[str, dict[str, Any]] = {}
    try:
        with Poller(url) as poller:
            warmup = send(clerk, 1, None, f"{label} warm-up")
            poller.wait(warmup)
            if steady:
                ids = send(clerk, steady, 50.0, f"{label} steady")
                clerk.wait_for_deliveries(timeout=WAIT_SECONDS)
                poller.wait(ids)
                results[f"steady 50/s, {steady} events"] = latencies(url, clerk, poller, ids)
            for b in range(bursts):
                time.sleep(1.0)
                ids = send(clerk, burst_size, None, f"{label} burst {b}")
                clerk.wait_for_deliveries(timeout=WAIT_SECONDS)
                poller.wait(ids)
                results[f"burst {b + 1} of {burst_size}"] = latencies(url, clerk, poller, ids)
    finally:
        clerk.stop()
    return results


@contextlib.contextmanager
def dagster_daemon(server: str, env: dict[str, str], log_path: Path) -> Iterator[None]:
    """``dagster-daemon run`` with deploy/dagster.yaml, its storage in a throwaway database."""
    with own_database(server) as storage, tempfile.TemporaryDirectory() as home:
        shutil.copy(DEPLOY_DAGSTER_YAML, Path(home) / "dagster.yaml")
        url = make_url(storage)
        daemon_env = {
            **env, "DAGSTER_HOME": home, "DAGSTER_PG_HOST": url.host or "127.0.0.1",
            "DAGSTER_PG_PORT": str(url.port or 5432), "DAGSTER_PG_USERNAME": url.username or "postgres",
            "DAGSTER_PG_PASSWORD": url.password or "unused", "DAGSTER_PG_DB": url.database or "",
        }  # fmt: skip
        with log_path.open("a") as out:
            daemon = subprocess.Popen(
                [str(BIN / "dagster-daemon"), "run", "-w", "workspace.yaml"],
                cwd=common.REPO, env=daemon_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        try:
            yield
        finally:
            stop_group(daemon)


async def post_all(base: str, requests: list[tuple[bytes, dict[str, str]]], concurrency: int) -> list[int]:
    statuses, pending = [], iter(requests)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:

        async def sender() -> None:
            for body, headers in pending:
                response = await client.post("/webhooks/clerk", content=body, headers=headers)
                statuses.append(response.status_code)

        await asyncio.gather(*(sender() for _ in range(concurrency)))
    return statuses


def signed(envelopes: list[dict[str, Any]], secret: str) -> list[tuple[bytes, dict[str, str]]]:
    bodies = [json.dumps(envelope, separators=(",", ":")).encode() for envelope in envelopes]
    return [(body, {"content-type": "application/json", **svix_headers(secret, body)}) for body in bodies]


def ingest_round(
    server: str, mode: str, envelopes: list[dict[str, Any]], secret: str, concurrency: int, logs: Path
) -> dict[str, float]:
    """One receiver in ``mode`` on a fresh schema: events/s answered 2xx (and stored); in inline mode,
    also how many its worker applied while the senders ran."""
    requests = signed(envelopes, secret)
    with common.bench_schema(server) as url:
        engine = migrated(url)
        with receiver_process(url, mode, logs / f"receiver-{mode}.log") as base:
            asyncio.run(post_all(base, signed(mixed_events(WARM_UP, seed=99), secret), 4))
            pending = sa.select(sa.func.count()).where(webhook_inbox.c.status == "pending")
            deadline = time.monotonic() + 60
            while mode == "inline" and time.monotonic() < deadline:  # let the worker apply the warm-up
                with engine.connect() as conn:
                    if not conn.execute(pending.select_from(webhook_inbox)).scalar_one():
                        break
                time.sleep(0.1)
            started = time.perf_counter()
            statuses = asyncio.run(post_all(base, requests, concurrency))
            elapsed = time.perf_counter() - started
            query = sa.select(webhook_inbox.c.status, sa.func.count()).group_by(webhook_inbox.c.status)
            with engine.connect() as conn:
                counts = Counter(dict(conn.execute(query).all()))
        dispose_engines()
    ok = sum(200 <= status < 300 for status in statuses)
    stored = sum(counts.values()) - WARM_UP
    if ok != len(requests) or stored != len(requests):
        raise RuntimeError(f"{mode}: {ok} of {len(requests)} answered 2xx, {stored} stored")
    applied = max(0, counts["applied"] + counts["ignored"] - WARM_UP)
    return {"rate": ok / elapsed, "seconds": elapsed, "applied": applied}


def store_backlog(engine: sa.Engine, envelopes: list[dict[str, Any]]) -> None:
    """The backlog as the receiver stores it (pending, one row per svix-id), in one bulk insert."""
    rows = [
        {"svix_id": f"msg_backlog_{i:06d}", "event_type": envelope["type"], "payload": envelope,
         "event_timestamp": inbox.event_time(envelope), "status": "pending"}
        for i, envelope in enumerate(envelopes)
    ]  # fmt: skip
    with engine.begin() as conn:
        conn.execute(sa.insert(webhook_inbox), rows)


def drain(
    server: str, envelopes: list[dict[str, Any]], how: str, budget: float, profile: cProfile.Profile | None
) -> dict[str, Any]:
    """Store the backlog on a fresh schema and drain it ``how`` (batch-500, batch-100, or a
    clerk_webhook_apply run) for at most ``budget`` seconds (a run always drains all it was given)."""
    with common.bench_schema(server) as url:
        engine = migrated(url)
        store_backlog(engine, envelopes)
        settings = load_settings()
        started = time.perf_counter()
        if profile is not None:
            profile.enable()
        if how == "run":
            result = defs.resolve_job_def("clerk_webhook_apply").execute_in_process(
                resources={
                    "postgres": PostgresResource(database_url=url),
                    "sync_policy": SyncPolicyResource(),
                    "webhook_apply": WebhookApplyResource(),
                },
                instance=dg.DagsterInstance.ephemeral(),
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            )
            if not result.success:
                raise RuntimeError("the clerk_webhook_apply run failed")
        else:
            report = apply_pending_events(
                engine, settings, log, batch_size=int(how.split("-")[1]), max_batches=10**9,
                should_stop=lambda: time.perf_counter() - started > budget,
            )  # fmt: skip
            if report.skipped_reason:
                raise RuntimeError(f"{how}: {report.skipped_reason}")
        if profile is not None:
            profile.disable()
        elapsed = time.perf_counter() - started
        with engine.connect() as conn:
            query = sa.select(webhook_inbox.c.status, sa.func.count()).group_by(webhook_inbox.c.status)
            statuses = Counter(dict(conn.execute(query).all()))
        dispose_engines()
    if statuses["failed"] or statuses["dead"] or statuses["quarantined"]:
        raise RuntimeError(f"{how}: events failed: {dict(statuses)}")
    done = len(envelopes) - statuses["pending"]
    return {"seconds": elapsed, "done": done, "rate": done / elapsed, "statuses": statuses}


def profile_tables(profile: cProfile.Profile, events: int, top: int = 10) -> tuple[str, str, str]:
    """Top functions by own time; orgsync's own functions by cumulative time; statements per event."""
    stats = pstats.Stats(profile, stream=io.StringIO()).stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in stats.values()) or 1.0

    def row(key: tuple[str, int, str], entry: tuple) -> list[object]:
        filename, line, function = key
        where = f"{Path(filename).name}:{line} {function}" if line else function
        _, calls, own, cumulative, _ = entry
        return [f"`{where}`", f"{calls:,}", f"{own:.2f}", f"{own / total:.0%}", f"{cumulative:.2f}",
                f"{cumulative / total:.0%}"]  # fmt: skip

    header = ["function", "calls", "own s", "own share", "cumulative s", "cumulative share"]
    by_own = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)[:top]
    ours = [item for item in stats.items() if "orgsync_pipeline" in item[0][0]]
    by_cumulative = sorted(ours, key=lambda item: item[1][3], reverse=True)[:top]
    counted = ("sqlalchemy/engine/base.py", "orgsync_pipeline/validation.py")
    calls = Counter({key[2]: entry[1] for key, entry in stats.items() if key[0].endswith(counted)})
    per_event = (
        f"Per event: {calls['execute'] / events:.1f} SQL statements through SQLAlchemy, of which "
        f"{calls['_run_ddl_visitor'] / events:.1f} DDL (temporary staging tables), and "
        f"{calls['_run_schema'] / events:.1f} pandera DataFrame validations."
    )
    return (
        common.markdown_table(header, [row(*item) for item in by_own]),
        common.markdown_table(header, [row(*item) for item in by_cumulative]),
        per_event,
    )


@contextlib.contextmanager
def own_database(server: str) -> Iterator[str]:
    """A throwaway database on ``server``: the inbox's apply lock is a database-wide advisory lock, so
    tests or other benchmarks draining an inbox in the same database (any schema) would hold it."""
    name = f"bench_push_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server).set(database=name).render_as_string(hide_password=False)
    finally:
        dispose_engines()
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def latency_table(results: dict[str, dict[str, dict[str, Any]]], target: float) -> tuple[str, list[str]]:
    rows, verdicts = [], []
    for mode, rounds in results.items():
        for label, result in rounds.items():
            values = result["poll"]
            p95 = percentile(values, 0.95)
            rows.append(
                [
                    mode, label, f"{result['rate']:,.0f}", len(values),
                    *(f"{v:.3f}" for v in (statistics.median(values), p95, percentile(values, 0.99))),
                    f"{max(values):.3f}", f"{target:g}", f"{p95 / target:.2f}",
                    f"{statistics.median(result['inbox']):.3f} / {percentile(result['inbox'], 0.95):.3f}",
                ]
            )  # fmt: skip
            verdicts.append(f"{mode} {label}: p95 {p95:.3f} s ({'met' if p95 <= target else 'MISSED'})")
    header = ["mode", "load", "delivered/s", "events", "p50 s", "p95 s", "p99 s", "max s", "target p95 s",
              "p95 ÷ target", "inbox applied-received p50 / p95 s"]  # fmt: skip
    return common.markdown_table(header, rows), verdicts


def run_latency(args: argparse.Namespace, server: str, secret: str, logs: Path, mode: str) -> dict[str, Any]:
    """Latency rounds against a receiver in ``mode`` (sensor: with dagster-daemon applying)."""
    steady = 200 if args.quick else args.steady
    bursts = (1 if args.quick else args.bursts) if mode == "inline" else (0 if args.quick else 1)
    with common.bench_schema(server) as url, contextlib.ExitStack() as stack:
        migrated(url)
        if mode == "sensor":
            env = {**os.environ, "DATABASE_URL": url, "ORGSYNC_WEBHOOK_APPLY": "sensor"}
            env.pop("ORGSYNC_WEBHOOK_SENSOR_INTERVAL", None)  # the default (5 s), on purpose
            stack.enter_context(dagster_daemon(server, env, logs / "daemon.log"))
        base = stack.enter_context(receiver_process(url, mode, logs / f"receiver-{mode}.log"))
        rounds = latency_rounds(url, base, secret, steady, bursts, args.burst_size, mode)
        stack.close()
        dispose_engines()
    return {LATENCY_MODES[mode]: rounds}


def run_throughput(args: argparse.Namespace, server: str, secret: str, logs: Path) -> dict[str, list]:
    count = 2000 if args.quick else args.ingest_events
    envelopes = mixed_events(count, seed=args.seed)
    results: dict[str, list[dict[str, float]]] = {"inline": [], "sensor": []}
    for _ in range(1 if args.quick else args.rounds):
        for mode in ("inline", "sensor"):
            results[mode].append(ingest_round(server, mode, envelopes, secret, args.concurrency, logs))
            print(f"ingest {mode}: {results[mode][-1]}")
    return results


def run_apply(args: argparse.Namespace, server: str) -> dict[str, Any]:
    budget = 15.0 if args.quick else args.apply_budget
    envelopes = mixed_events(args.backlog, seed=args.seed)
    results: dict[str, Any] = {"kinds": Counter(envelope["type"] for envelope in envelopes)}
    for how in ("batch-500", "batch-100"):
        results[how] = drain(server, envelopes, how, budget, None)
        print(f"apply {how}: {results[how]['rate']:,.0f} events/s ({results[how]['done']:,} events)")
    # A run drains all it is given: give it what batch-500 drained in the budget.
    sized = envelopes[: max(100, min(len(envelopes), results["batch-500"]["done"]))]
    results["run"] = {**drain(server, sized, "run", budget, None), "backlog": len(sized)}
    profile = cProfile.Profile()
    results["profiled"] = drain(server, envelopes, "batch-100", budget, profile)
    results["profile"] = profile_tables(profile, results["profiled"]["done"])
    return results


def throughput_table(results: dict[str, list[dict[str, float]]], concurrency: int) -> tuple[str, str]:
    rows = []
    for mode, rounds in results.items():
        rates = [r["rate"] for r in rounds]
        applied = sum(r["applied"] for r in rounds) / sum(r["seconds"] for r in rounds)
        rows.append([mode, len(rounds), f"{sum(r['seconds'] for r in rounds):.1f}",
                     " / ".join(f"{rate:,.0f}" for rate in rates), f"{statistics.median(rates):,.0f}",
                     f"{applied:,.0f}" if mode == "inline" else "0 (left to runs)"])  # fmt: skip
    inline = statistics.median(r["rate"] for r in results["inline"])
    sensor = statistics.median(r["rate"] for r in results["sensor"])
    cost = 1 - inline / sensor
    verdict = (
        f"Inline ÷ sensor ingest: {inline / sensor:.2f}, so inline costs {cost:.0%} of ingest "
        f"(target: at most 10%: {'met' if cost <= 0.10 else 'MISSED'}); {concurrency} concurrent senders."
    )
    header = ["receiver", "rounds", "seconds sending", "events/s 2xx per round", "median events/s",
              "applied/s meanwhile"]  # fmt: skip
    return common.markdown_table(header, rows), verdict


def apply_section(results: dict[str, Any], backlog: int, budget: float) -> str:
    labels = {
        "batch-500": "`apply_pending_events`, batches of 500 (a run's `ORGSYNC_WEBHOOK_BATCH_SIZE`)",
        "batch-100": "`apply_pending_events`, batches of 100 (smaller transactions)",
        "run": "`clerk_webhook_apply` run (`execute_in_process`, whole given backlog)",
        "profiled": "batches of 100 under cProfile (profiling slows it)",
    }
    rows = []
    for how, label in labels.items():
        r = results[how]
        rows.append([label, f"{r.get('backlog', backlog):,}", f"{r['done']:,}", f"{r['seconds']:.1f}",
                     f"{r['rate']:,.0f}", "2,000", f"{r['rate'] / 2000:.3f}"])  # fmt: skip
    table = common.markdown_table(
        ["drain", "backlog", "events applied", "seconds", "events/s", "target events/s", "÷ target"], rows
    )
    kinds = ", ".join(f"{kind} {n:,}" for kind, n in results["kinds"].most_common())
    by_own, by_cumulative, per_event = results["profile"]
    rate = results["batch-500"]["rate"]
    return f"""Backlog of {backlog:,} events ({kinds}); each drain gets {budget:.0f} s, checked between
batches. At {rate:,.0f} events/s the whole backlog would take {backlog / rate:,.0f} s.

{table}

{per_event} The profiled drain's ten functions with the most own time, then orgsync's own by cumulative
time:

{by_own}

{by_cumulative}
"""


def run(args: argparse.Namespace) -> common.Section:
    os.environ.setdefault("CLERK_SECRET_KEY", "sk_test_unused_by_webhooks")
    secret = os.environ["CLERK_WEBHOOK_SECRET"] = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    started, load_before = time.perf_counter(), os.getloadavg()
    parts: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp, own_database(common.server_url(args.database_url)) as server:
        logs = Path(tmp)
        pg = common.postgres_version(server)
        latency: dict[str, Any] = {}
        for mode in ("inline", "sensor"):
            if ("latency" if mode == "inline" else "sensor") in args.parts:
                latency[mode] = run_latency(args, server, secret, logs, mode)
                parts[mode] = latency_table(latency[mode], TARGETS[mode])[0]
        if "throughput" in args.parts:
            table, verdict = throughput_table(run_throughput(args, server, secret, logs), args.concurrency)
            parts["throughput"] = f"{table}\n\n{verdict}"
        if "apply" in args.parts:
            budget = 15.0 if args.quick else args.apply_budget
            parts["apply"] = apply_section(run_apply(args, server), args.backlog, budget)
    verdicts = [v for mode, rounds in latency.items() for v in latency_table(rounds, TARGETS[mode])[1]]
    body = [
        f"Run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC{' (`--quick`)' if args.quick else ''} in "
        f"{time.perf_counter() - started:.0f}s. Machine: {common.machine()}; load average "
        f"{load_before[0]:.1f} at the start, {os.getloadavg()[0]:.1f} at the end (other work shared the "
        f"2 cores). {pg}, in a database of the benchmark's own.",
    ]
    for name, text in parts.items():
        body += ["", f"#### {TITLES[name]}", "", text.rstrip()]
    if verdicts:
        body += ["", "Latency verdicts: " + "; ".join(verdicts) + "."]
    return common.Section("push", "\n".join(body))


def main(argv: list[str] | None = None) -> int:
    parser = common.new_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="a bounded run (about 5 minutes on 2 cores)")
    parser.add_argument("--parts", nargs="+", default=["latency", "sensor", "throughput", "apply"])
    parser.add_argument("--steady", type=int, default=500, help="events at 50/s per latency run")
    parser.add_argument("--bursts", type=int, default=2, help="bursts per inline latency run")
    parser.add_argument("--burst-size", type=int, default=500)
    parser.add_argument("--ingest-events", type=int, default=3000, help="events per throughput round")
    parser.add_argument("--rounds", type=int, default=2, help="throughput rounds per mode")
    parser.add_argument("--concurrency", type=int, default=8, help="concurrent senders")
    parser.add_argument("--backlog", type=int, default=10_000, help="events in the apply backlog")
    parser.add_argument("--apply-budget", type=float, default=60.0, help="seconds per backlog drain")
    parser.add_argument("--seed", type=int, default=5)
    common.add_database_argument(parser)
    return common.run_benchmark(parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
