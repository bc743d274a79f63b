"""Shared helpers of the benchmarks: the database, a throwaway schema, timers, machine facts, and the
sections of BENCHMARKS.md each script regenerates.

Benchmarks run as scripts (``.venv/bin/python bench/<name>.py``), so this module is imported as
``common`` from the ``bench/`` directory on ``sys.path``.
"""

import argparse
import contextlib
import os
import platform
import re
import resource
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from orgsync_pipeline.store.database import dispose_engines, embedded_database_url, normalize_url

REPO = Path(__file__).resolve().parent.parent
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
SERVICE_URL = "postgresql://postgres@127.0.0.1:5432/test"


# ---------------------------------------------------------------------- database


def add_database_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--database-url",
        default=os.environ.get("ORGSYNC_BENCH_DATABASE_URL") or SERVICE_URL,
        help="PostgreSQL server to create the benchmark schema in "
        "(default: $ORGSYNC_BENCH_DATABASE_URL, else %(default)s; the embedded server if unreachable)",
    )
    parser.add_argument(
        "--write", action="store_true", help="rewrite this benchmark's section of BENCHMARKS.md"
    )


def reachable(url: str) -> bool:
    import psycopg

    parsed = make_url(normalize_url(url)).set(drivername="postgresql")
    try:
        psycopg.connect(parsed.render_as_string(hide_password=False), connect_timeout=3).close()
    except psycopg.Error:
        return False
    return True


def server_url(configured: str | None) -> str:
    """The configured server when it answers, otherwise the embedded PostgreSQL (started if needed)."""
    if configured and reachable(configured):
        return normalize_url(configured)
    home = Path(tempfile.gettempdir()) / "orgsync-bench"
    print(f"PostgreSQL at {configured!r} is not reachable: using the embedded server in {home}")
    return embedded_database_url(home)


@contextlib.contextmanager
def bench_schema(server: str) -> Iterator[str]:
    """A fresh schema ``bench_<random>`` on ``server``; yields a URL whose connections see only it."""
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(server)
    with admin.begin() as conn:
        conn.execute(sa.schema.CreateSchema(schema))
    url = make_url(server).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        dispose_engines()
        with admin.begin() as conn:
            conn.execute(sa.schema.DropSchema(schema, cascade=True))
        admin.dispose()


def postgres_version(url: str) -> str:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            version = conn.execute(sa.text("SHOW server_version")).scalar_one()
            settings = {
                name: conn.execute(sa.text(f"SHOW {name}")).scalar_one()
                for name in ("shared_buffers", "synchronous_commit", "fsync")
            }
    finally:
        engine.dispose()
    extras = ", ".join(f"{name}={value}" for name, value in settings.items())
    return f"PostgreSQL {version.split()[0]} ({extras})"


# ---------------------------------------------------------------------- timing and memory


@contextlib.contextmanager
def timed(into: dict[str, float], name: str) -> Iterator[None]:
    """Add the wall time of the block to ``into[name]``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        into[name] = into.get(name, 0.0) + time.perf_counter() - started


def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (Linux ``clear_refs``)."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def peak_rss_mib() -> float:
    """Peak RSS since the last :func:`reset_peak_rss` (VmHWM), else since the process started."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mib() -> float:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


# ---------------------------------------------------------------------- machine


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = ""
    with contextlib.suppress(OSError, ValueError, IndexError):
        total_kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {total_kb / 1024 / 1024:.0f} GiB RAM"
    return f"{cpu}, {os.cpu_count()} cores{memory}, Python {platform.python_version()}, {platform.system()}"


# ---------------------------------------------------------------------- tables and BENCHMARKS.md


def rate(count: float, seconds: float) -> str:
    if seconds <= 0:
        return "n/a"
    per_second = count / seconds
    return f"{per_second:,.0f}"


def seconds(value: float) -> str:
    return f"{value:.3f}" if value < 10 else f"{value:.1f}"


def markdown_table(header: list[str], rows: list[list[object]]) -> str:
    def cell(value: object) -> str:
        return str(value).replace("|", "\\|")

    aligned = ["---" if i == 0 else "---:" for i in range(len(header))]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(aligned) + "|",
        *("| " + " | ".join(cell(value) for value in row) + " |" for row in rows),
    ]
    return "\n".join(lines)


@dataclass
class Section:
    """One benchmark's part of BENCHMARKS.md: its own results, regenerated by its script."""

    name: str  # marker key, e.g. "apply"
    body: str

    def render(self) -> str:
        return self.body.rstrip() + "\n"


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"


def write_section(section: Section, path: Path = BENCHMARKS_MD) -> None:
    """Replace the text between this section's markers in BENCHMARKS.md (appended if absent)."""
    begin, end = _markers(section.name)
    block = f"{begin}\n{section.render()}{end}"
    text = path.read_text() if path.exists() else ""
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: block, text)
    else:
        text = text.rstrip() + ("\n\n" if text else "") + block + "\n"
    path.write_text(text)
    print(f"wrote the {section.name!r} section of {path}")


def section_placeholder(name: str) -> str:
    begin, end = _markers(name)
    return f"{begin}\n_not run yet: `.venv/bin/python bench/run_all.py`_\n{end}"


def run_benchmark(
    parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], Section], argv: list[str] | None
) -> int:
    """Parse ``argv``, run the benchmark, print its section, and write it to BENCHMARKS.md on ``--write``."""
    args = parser.parse_args(argv)
    section = run(args)
    print(section.render())
    if args.write:
        write_section(section)
    return 0


def new_parser(doc: str | None) -> argparse.ArgumentParser:
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
