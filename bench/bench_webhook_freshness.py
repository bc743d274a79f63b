"""Webhook freshness: from Clerk's delivery of an event (the receiver's 2xx) to the row in Postgres.

The whole path runs for real: the Clerk emulator sends signed webhooks to the receiver (uvicorn on
loopback), which commits them to the inbox; `dagster-daemon` evaluates `clerk_webhook_sensor` at its
default interval and launches `clerk_webhook_apply`, which writes the rows. A poller reads
`organizations` every 50 ms and notes when each event's organization appears.

Two Dagster instance configurations are measured back to back in one run, each with its own daemon:
orgsync's (`DefaultRunCoordinator`: the sensor's run launches at once) and Dagster's default (the
queued run coordinator, whose daemon dequeues runs on its own loop).

    .venv/bin/python bench/bench_webhook_freshness.py [--events 20] [--write]
"""

import argparse
import base64
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import sqlalchemy as sa
from common import (
    REPO,
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
from orgsync_pipeline.demo import DAGSTER_YAML
from orgsync_pipeline.store.database import migrated_engine_for
from orgsync_pipeline.store.schema import organizations
from orgsync_pipeline.webhooks import create_app, serve_in_thread

QUEUED_DAGSTER_YAML = "telemetry:\n  enabled: false\n"
DAEMON = Path(sys.executable).with_name("dagster-daemon")


def start_daemon(dagster_home: Path, log_path: Path) -> subprocess.Popen:
    with log_path.open("w") as log:
        return subprocess.Popen(
            [str(DAEMON), "run", "-w", "workspace.yaml"],
            cwd=REPO,
            env={**os.environ, "DAGSTER_HOME": str(dagster_home)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_daemon(daemon: subprocess.Popen) -> None:
    os.killpg(daemon.pid, signal.SIGTERM)
    try:
        daemon.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(daemon.pid, signal.SIGKILL)
        daemon.wait()


class Poller:
    """Notes when each organization id first appears in Postgres."""

    def __init__(self, url: str) -> None:
        self.engine = migrated_engine_for(url)
        self.seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with self.engine.connect() as conn:
                ids = conn.execute(sa.select(organizations.c.id)).scalars().all()
            now = time.time()
            for org_id in ids:
                self.seen.setdefault(org_id, now)
            time.sleep(0.05)

    def __enter__(self) -> "Poller":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(label: str, dagster_yaml: str, url: str, events: int, rng: random.Random) -> list[float]:
    """Latencies (s) from delivery to row for ``events`` organization.created events."""
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        (home / "dagster.yaml").write_text(dagster_yaml)
        daemon = start_daemon(home, home / "daemon.log")
        try:
            with Poller(url) as poller, serve_in_thread(create_app()) as receiver_url:
                emulator = ClerkEmulator()
                emulator.add_webhook_endpoint(
                    f"{receiver_url}/webhooks/clerk", os.environ["CLERK_WEBHOOK_SECRET"]
                )
                warmup = emulator.create_organization("Warm-up")  # the daemon's first tick and run
                deadline = time.time() + 120
                while warmup["id"] not in poller.seen and time.time() < deadline:
                    time.sleep(0.1)
                if warmup["id"] not in poller.seen:
                    raise RuntimeError(f"{label}: daemon applied nothing; see {home / 'daemon.log'}")

                created = []
                for i in range(events):
                    time.sleep(rng.uniform(0.5, 6.0))  # arrivals at random phases of the sensor tick
                    created.append(emulator.create_organization(f"Event {i}")["id"])
                emulator.wait_for_deliveries(timeout=60)
                deadline = time.time() + 120
                while not all(org_id in poller.seen for org_id in created) and time.time() < deadline:
                    time.sleep(0.1)
                delivered = {}
                for record in emulator.deliveries:
                    if record.ok:
                        delivered.setdefault(record.msg_id, record.at + record.elapsed)
                by_org = {
                    event["data"]["id"]: delivered[msg_id]
                    for event, msg_id in zip(emulator.webhook_events, delivered, strict=True)
                }
                emulator.stop()
        finally:
            stop_daemon(daemon)
    missing = [org_id for org_id in created if org_id not in poller.seen]
    if missing:
        raise RuntimeError(f"{label}: {len(missing)} events never landed")
    return [poller.seen[org_id] - by_org[org_id] for org_id in created]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, round(q * len(ordered)) - 1)]


def main(argv: list[str] | None = None) -> int:
    parser = new_parser(__doc__)
    parser.add_argument("--events", type=int, default=20)
    parser.add_argument("--seed", type=int, default=11)
    add_database_argument(parser)
    return run_benchmark(parser, run, argv)


def run(args: argparse.Namespace) -> Section:
    os.environ["CLERK_WEBHOOK_SECRET"] = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    os.environ.setdefault("CLERK_SECRET_KEY", "sk_test_unused_by_webhooks")
    os.environ.pop("ORGSYNC_WEBHOOK_SENSOR_INTERVAL", None)  # the default, on purpose
    rng = random.Random(args.seed)
    rows = []
    results = {}
    with bench_schema(server_url(args.database_url)) as url:
        os.environ["DATABASE_URL"] = url
        for label, config in (
            ("orgsync (DefaultRunCoordinator, in-process executor)", DAGSTER_YAML),
            ("Dagster default (QueuedRunCoordinator, in-process executor)", QUEUED_DAGSTER_YAML),
        ):
            latencies = measure(label, config, url, args.events, rng)
            results[label] = latencies
            rows.append(
                [
                    label,
                    len(latencies),
                    f"{statistics.median(latencies):.1f}",
                    f"{percentile(latencies, 0.95):.1f}",
                    f"{max(latencies):.1f}",
                ]
            )
            print(rows[-1])
    (ours, default) = results.values()
    ratio = percentile(default, 0.95) / percentile(ours, 0.95)
    body = "\n".join(
        [
            f"Machine: {machine()}. Daemon at the defaults (sensor every 5 s); {args.events}",
            "`organization.created` events sent by the emulator at random intervals of 0.5 to 6 s; latency",
            "from the receiver's 2xx to the organization's row being visible (polled every 50 ms). Both",
            "configurations measured in one run, one after the other.",
            "",
            markdown_table(["Dagster instance", "events", "p50 s", "p95 s", "max s"], rows),
            "",
            f"p95 ratio, Dagster's default ÷ orgsync's: {ratio:.2f}.",
        ]
    )
    return Section("freshness", body)


if __name__ == "__main__":
    sys.exit(main())
