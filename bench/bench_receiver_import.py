"""Benchmark of the webhook receiver's start-up cost: import time and memory.

Each round runs a fresh interpreter that times ``import orgsync_pipeline.webhooks`` with
``time.perf_counter`` (wall) and ``time.process_time`` (CPU, less disturbed by other load on the
machine), interpreter start-up excluded, then builds the app with ``create_app()``
(sensor and inline apply modes; neither connects to the database) and reports its peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``) and which heavy libraries ended up loaded.
The median over ``--rounds`` is reported with the range.

    .venv/bin/python bench/bench_receiver_import.py [--rounds 10] [--apply sensor|inline]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("pandas", "pandera", "numpy", "dagster", "orgsync_pipeline.validation", "orgsync_pipeline.events")
# A well-formed signing secret (whsec_ and base64 of 24 bytes): create_app refuses to start without one.
SECRET = "whsec_" + "MDEyMzQ1Njc4OWFiY2RlZmdoaWprbG1u"

CHILD = """
import json, resource, sys, time
started, started_cpu = time.perf_counter(), time.process_time()
import orgsync_pipeline.webhooks as webhooks
imported, imported_cpu = time.perf_counter() - started, time.process_time() - started_cpu
app = webhooks.create_app()
rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({
    "import_seconds": imported,
    "import_cpu_seconds": imported_cpu,
    "rss_mib": rss_kib / 1024,
    "loaded": [name for name in HEAVY if name in sys.modules],
}))
"""


def one_round(apply: str) -> dict:
    env = {
        **os.environ,
        "CLERK_WEBHOOK_SECRET": SECRET,
        "ORGSYNC_WEBHOOK_APPLY": apply,
        "PYTHONDONTWRITEBYTECODE": "",
    }
    code = f"HEAVY = {HEAVY!r}\n{CHILD}"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def summary(values: list[float], unit: str, scale: float = 1.0) -> str:
    scaled = [value * scale for value in values]
    return f"{statistics.median(scaled):.1f} {unit} (range {min(scaled):.1f} to {max(scaled):.1f})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--apply", choices=("sensor", "inline"), default="inline")
    args = parser.parse_args()
    one_round(args.apply)  # warm the bytecode cache and the page cache
    rounds = [one_round(args.apply) for _ in range(args.rounds)]
    print(f"receiver ({args.apply} apply), {args.rounds} fresh interpreters:")
    print(
        "  import orgsync_pipeline.webhooks, wall:",
        summary([r["import_seconds"] for r in rounds], "ms", 1000),
    )
    print(
        "  import orgsync_pipeline.webhooks, CPU: ",
        summary([r["import_cpu_seconds"] for r in rounds], "ms", 1000),
    )
    print("  peak RSS after create_app():          ", summary([r["rss_mib"] for r in rounds], "MiB"))
    print("  heavy modules loaded:                 ", ", ".join(rounds[-1]["loaded"]) or "none")


if __name__ == "__main__":
    main()
