"""Run every benchmark and rewrite BENCHMARKS.md.

Each ``bench/bench_*.py`` runs in its own process (so one benchmark's memory and caches do not colour
the next, and peak RSS is per benchmark) with ``--write``, which fills its section of BENCHMARKS.md. This
script first rewrites the file's fixed text (what each benchmark does and how to read it), keeping
sections written by benchmarks it does not know, then records the machine and the total runtime.

    .venv/bin/python bench/run_all.py [--database-url URL] [--quick] [--skip NAME ...] [--only NAME ...]
"""

import argparse
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
}
TAKES_DATABASE_URL = {"bench_apply", "bench_sync", "bench_webhook_freshness"}

# The fixed text of BENCHMARKS.md; {name} marks where the section written by a benchmark goes.
TEMPLATE = BENCH / "benchmarks_template.md"


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
    known = {"run", "apply", "validation", "sync", "freshness"}
    kept = foreign_sections(BENCHMARKS_MD.read_text(), known) if BENCHMARKS_MD.exists() else []
    text = TEMPLATE.read_text()
    for name in known:
        text = text.replace("{" + name + "}", section_placeholder(name))
    if kept:
        text += "\n" + "\n\n".join(kept) + "\n"
    BENCHMARKS_MD.write_text(text)


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
        command = [sys.executable, str(script), "--write"]
        if script.stem in TAKES_DATABASE_URL:
            command += ["--database-url", server]
        if args.quick:
            command += KNOWN.get(script.stem, [])
        print(f"\n=== {script.name}", flush=True)
        began = time.perf_counter()
        try:
            outcome = subprocess.run(command, cwd=REPO, env=env, timeout=args.timeout, check=False)
            status = "ok" if outcome.returncode == 0 else f"failed (exit {outcome.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {args.timeout:.0f}s"
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
