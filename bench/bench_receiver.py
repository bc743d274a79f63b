"""Receiver throughput: verified, durably stored events per second, against a floor, in one run.

The floor is the least a receiver can do: a Starlette app that verifies the Svix signature with ``svix`` and
runs one ``INSERT`` per event (autocommit, pooled connection), under uvicorn. Against it,
``orgsync serve-webhooks --apply sensor --workers N`` (store only, as the target counts) and the default
inline mode, each in child processes on a fresh schema.

The load generator runs in its own process: requests are signed beforehand, then sent over keep-alive
HTTP/1.1 connections written and parsed by hand (asyncio streams), so that the generator costs little of
the two cores the receiver shares with it. It is bounded in count and in time: ``--events`` per round, or
``--seconds``, whichever ends first. Latency is from writing a request to reading its whole answer.

    .venv/bin/python bench/bench_receiver.py [--events 6000] [--connections 32] [--write]
"""

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import common
import httpx
import sqlalchemy as sa

from orgsync_pipeline.clerk.emulator import ClerkEmulator, svix_headers
from orgsync_pipeline.store.database import dispose_engines, migrated_engine_for
from orgsync_pipeline.store.schema import webhook_inbox

BIN = Path(sys.executable).parent
SECRET = "whsec_" + "YmVuY2htYXJrLXJlY2VpdmVyLXNlY3JldC0xMjM0NTY3OA=="
TARGET_RATE = 1500.0
TARGET_P99 = 0.050


# ---------------------------------------------------------------------- the floor receiver


def floor_app() -> Any:
    """Starlette + svix + one INSERT per event: the least any receiver does (uvicorn factory)."""
    import anyio
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route
    from svix.webhooks import Webhook, WebhookVerificationError

    verifier = Webhook(os.environ["CLERK_WEBHOOK_SECRET"])
    engine = sa.create_engine(
        os.environ["DATABASE_URL"].replace("postgresql://", "postgresql+psycopg://", 1), pool_size=10
    )
    insert = sa.text("INSERT INTO floor_inbox (svix_id, payload) VALUES (:id, CAST(:payload AS jsonb))")

    def store(svix_id: str, payload: str) -> None:
        with engine.begin() as conn:
            conn.execute(insert, {"id": svix_id, "payload": payload})

    async def receive(request: Request) -> JSONResponse:
        body = (await request.body()).decode()
        try:
            verifier.verify(body, dict(request.headers))
        except WebhookVerificationError:
            return JSONResponse({"error": "bad signature"}, status_code=401)
        await anyio.to_thread.run_sync(store, request.headers["svix-id"], body)
        return JSONResponse({"status": "stored"})

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    return Starlette(routes=[Route("/webhooks/clerk", receive, methods=["POST"]), Route("/healthz", healthz)])


# ---------------------------------------------------------------------- the load generator


def build_requests(count: int, port: int) -> list[bytes]:
    """``count`` signed organization.created deliveries as raw HTTP/1.1 requests."""
    emulator = ClerkEmulator()
    requests = []
    for i in range(count):
        org = emulator.create_organization(f"Load Org {i}")
        body = json.dumps(
            emulator.event_envelope("organization.created", org), separators=(",", ":")
        ).encode()
        headers = {**svix_headers(SECRET, body), "content-type": "application/json"}
        head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        requests.append(
            f"POST /webhooks/clerk HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n{head}"
            f"content-length: {len(body)}\r\n\r\n".encode()
            + body
        )
    return requests


async def _connection(
    port: int, requests: list[bytes], cursor: Iterator[int], deadline: float, out: list[tuple[int, float]]
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for index in cursor:
            if time.perf_counter() > deadline:
                return
            started = time.perf_counter()
            writer.write(requests[index])
            status_line = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
            out.append((int(status_line.split()[1]), time.perf_counter() - started))
    finally:
        writer.close()


def generate_load(port: int, requests: list[bytes], connections: int, seconds: float) -> dict[str, Any]:
    """Send ``requests`` over ``connections`` keep-alive connections, stopping after ``seconds``."""

    async def main() -> tuple[list[tuple[int, float]], float]:
        out: list[tuple[int, float]] = []
        cursor = iter(range(len(requests)))
        started = time.perf_counter()
        deadline = started + seconds
        await asyncio.gather(
            *(_connection(port, requests, cursor, deadline, out) for _ in range(connections))
        )
        return out, time.perf_counter() - started

    results, elapsed = asyncio.run(main())
    latencies = sorted(latency for _, latency in results)
    return {
        "sent": len(results),
        "ok": sum(200 <= status < 300 for status, _ in results),
        "seconds": elapsed,
        "p50": statistics.median(latencies),
        "p99": latencies[int(0.99 * (len(latencies) - 1))],
    }


def _load_process(port: int, count: int, connections: int, seconds: float, pipe: Any) -> None:
    requests = build_requests(count, port)
    pipe.send("ready")
    pipe.recv()
    pipe.send(generate_load(port, requests, connections, seconds))


def measure(port: int, count: int, connections: int, seconds: float) -> dict[str, Any]:
    """Run the load generator in its own process against ``port``; its figures."""
    context = multiprocessing.get_context("spawn")
    pipe, child = context.Pipe()
    process = context.Process(target=_load_process, args=(port, count, connections, seconds, child))
    process.start()
    assert pipe.recv() == "ready"
    pipe.send("go")
    result: dict[str, Any] = pipe.recv()
    process.join(timeout=30)
    result["rate"] = result["ok"] / result["seconds"]
    return result


# ---------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def server(command: list[str], env: dict[str, str], port: int) -> Iterator[None]:
    process = subprocess.Popen(
        command, env=env, cwd=Path(__file__).parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{command} did not start")
            time.sleep(0.2)
        yield
    finally:
        os.killpg(process.pid, 15)
        process.wait(timeout=60)


def stored(url: str, table: str) -> int:
    engine = sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        count = int(conn.execute(sa.select(sa.func.count()).select_from(sa.table(table))).scalar_one())
    engine.dispose()
    return count


def run_round(
    args: argparse.Namespace, server_url: str, name: str, workers: int, mode: str
) -> dict[str, Any]:
    """One receiver (``mode``: floor, sensor or inline) on a fresh schema, loaded once; its figures."""
    with common.bench_schema(server_url) as url:
        migrated_engine_for(url)
        dispose_engines()
        env = {**os.environ, "DATABASE_URL": url, "CLERK_WEBHOOK_SECRET": SECRET}
        port = free_port()
        if mode == "floor":
            with sa.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1)).begin() as conn:
                conn.execute(sa.text("CREATE TABLE floor_inbox (svix_id text PRIMARY KEY, payload jsonb)"))
            command = [str(BIN / "uvicorn"), "bench_receiver:floor_app", "--factory", "--port", str(port)]
            command += ["--workers", str(workers), "--log-level", "warning"]
            table = "floor_inbox"
        else:
            command = [str(BIN / "orgsync"), "serve-webhooks", "--port", str(port), "--apply", mode]
            command += ["--workers", str(workers)]
            table = webhook_inbox.name
        with server(command, env, port):
            measure(port, 200, 4, 30)  # warm-up: connections, caches, the inline worker's first drain
            before = stored(url, table)
            result = measure(port, args.events, args.connections, args.seconds)
            result["stored"] = stored(url, table) - before
    result.update(name=name, workers=workers)
    print(f"{name}: {result}")
    return result


# ---------------------------------------------------------------------- the benchmark


def run(args: argparse.Namespace) -> common.Section:
    server_url = common.server_url(args.database_url)
    rounds = [("floor: Starlette + svix + one INSERT", 1, "floor")]
    rounds += [(f"orgsync, sensor mode, {n} worker(s)", n, "sensor") for n in args.workers]
    rounds += [(f"orgsync, inline mode, {n} worker(s)", n, "inline") for n in args.workers]
    rounds += [("floor: Starlette + svix + one INSERT", max(args.workers), "floor")]
    results = [run_round(args, server_url, name, workers, mode) for name, workers, mode in rounds]
    floor = results[0]["rate"]
    rows = [
        [
            r["name"],
            r["workers"],
            f"{r['ok']:,} of {r['sent']:,}",
            f"{r['stored']:,}",
            f"{r['rate']:,.0f}",
            f"{r['rate'] / floor:.2f}",
            f"{r['p50'] * 1000:.1f}",
            f"{r['p99'] * 1000:.1f}",
            "met" if r["rate"] >= TARGET_RATE and r["p99"] < TARGET_P99 else "missed",
        ]
        for r in results
    ]
    table = common.markdown_table(
        ["receiver", "workers", "2xx", "stored", "events/s", "÷ floor (1 worker)", "p50 ms", "p99 ms",
         "target ≥ 1,500/s, p99 < 50 ms"],
        rows,
    )  # fmt: skip
    body = f"""### Results

{common.machine()}. Load generator in its own process on the same machine: {args.connections} keep-alive
connections, at most {args.events:,} events or {args.seconds:.0f} s per round, requests signed beforehand.

{table}
"""
    return common.Section("receiver", body)


def main(argv: list[str] | None = None) -> int:
    parser = common.new_parser(__doc__)
    parser.add_argument("--events", type=int, default=6000, help="events per round at the most")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds per round at the most")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    common.add_database_argument(parser)
    return common.run_benchmark(parser, run, argv)


if __name__ == "__main__":
    sys.exit(main())
