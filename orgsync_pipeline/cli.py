"""The orgsync command: migrate, serve-webhooks, requeue-dead-events, status, demo, dev, stop, emulator.

Expected failures print one or two lines (see orgsync_pipeline.failures) and exit with a documented
code; Ctrl-C and SIGTERM stop every command quietly.
"""

import argparse
import logging
import sys
import time
import warnings
from collections.abc import Callable

from orgsync_pipeline.settings import WEBHOOK_APPLY_MODES, SettingsError, load_settings


def migrate_command(args: argparse.Namespace) -> int:
    """Apply the migrations in sql/ to DATABASE_URL (or the embedded database)."""
    import sqlalchemy as sa

    from orgsync_pipeline.store.database import CONNECT_ARGS, migrate, resolve_database_url

    settings = load_settings()
    url = resolve_database_url(
        settings.database_url.reveal() if settings.database_url else None, settings.home
    )
    engine = sa.create_engine(url, connect_args=CONNECT_ARGS)
    try:
        applied = migrate(engine)
    finally:
        engine.dispose()
    print(f"applied {', '.join(applied)}" if applied else "database is up to date")
    return 0


def serve_webhooks_command(args: argparse.Namespace) -> int:
    """Receive Clerk's webhooks: verify each Svix signature, commit the event to the inbox, apply it."""
    from orgsync_pipeline.lifecycle import check_port_free
    from orgsync_pipeline.webhooks import serve

    check_port_free(args.host, args.port)
    serve(args.host, args.port, apply=args.apply, workers=args.workers)
    return 0


def requeue_dead_events_command(args: argparse.Namespace) -> int:
    """Give dead webhook events a fresh start, once the cause of their failure is fixed."""
    from orgsync_pipeline.store.database import migrated_engine_for, resolve_database_url
    from orgsync_pipeline.store.inbox import requeue_dead

    settings = load_settings()
    url = resolve_database_url(
        settings.database_url.reveal() if settings.database_url else None, settings.home
    )
    with migrated_engine_for(url, auto_migrate=settings.auto_migrate).begin() as conn:
        count = requeue_dead(conn)
    print(f"requeued {count} dead webhook events")
    return 0


def demo_command(args: argparse.Namespace) -> int:
    """Sync the built-in Clerk emulator into the embedded PostgreSQL and show what landed."""
    from orgsync_pipeline.demo import run_demo
    from orgsync_pipeline.lifecycle import embedded_server_running, stop_hint

    home = load_settings().home
    try:
        return run_demo()
    finally:
        if embedded_server_running(home):
            print(f"\n{stop_hint(home)}")


def dev_command(args: argparse.Namespace) -> int:
    """Run dagster dev on the orgsync code location; with the emulator when CLERK_SECRET_KEY is unset."""
    from orgsync_pipeline.demo import run_dev

    return run_dev(args.dagster_args, verbose=args.verbose)


def status_command(args: argparse.Namespace) -> int:
    """Show, per table, rows and the last full sync and write; the webhook inbox; the quarantine."""
    import json

    from orgsync_pipeline.status import collect_status, render_status
    from orgsync_pipeline.store.database import configured_database_url, engine_for

    status = collect_status(engine_for(configured_database_url(load_settings())))
    print(json.dumps(status.as_dict(), indent=2) if args.json else render_status(status))
    return 0


def stop_command(args: argparse.Namespace) -> int:
    """Stop the embedded PostgreSQL that demo, dev and commands without DATABASE_URL start."""
    from orgsync_pipeline.lifecycle import stop_embedded_server

    home = load_settings().home
    stopped = stop_embedded_server(home)
    print(f"{'stopped' if stopped else 'not running:'} the embedded PostgreSQL in {home / 'pgdata'}")
    return 0


def emulator_command(args: argparse.Namespace) -> int:
    """Serve a seeded Clerk emulator until interrupted."""
    from orgsync_pipeline.clerk.emulator import ClerkEmulator
    from orgsync_pipeline.lifecycle import check_port_free

    check_port_free(args.host, args.port)
    emulator = ClerkEmulator()
    emulator.start(host=args.host, port=args.port)
    emulator.seed_sample(organizations=args.organizations, users=args.users)
    print(f"CLERK_API_URL={emulator.api_url}")
    print(f"CLERK_SECRET_KEY={emulator.secret_key}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        emulator.stop()


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows each option's default and keeps the epilog's line breaks."""


def _about(command: Callable[[argparse.Namespace], int]) -> str:
    """A command's docstring as help text: its first paragraph, without reST markup."""
    return " ".join((command.__doc__ or "").split("\n\n")[0].split()).replace("``", "")


def build_parser() -> argparse.ArgumentParser:
    """The orgsync command line: one subcommand per task, each with --verbose."""
    from orgsync_pipeline import exit_codes

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--verbose",
        action="store_true",
        help="also show the libraries' INFO logs (uvicorn, Dagster, PostgreSQL)",
    )
    parser = argparse.ArgumentParser(
        prog="orgsync",
        description="Keep PostgreSQL in step with Clerk: full syncs on Dagster, webhooks in between.",
        epilog="exit codes:\n"
        + "\n".join(f"  {code:<4} {meaning}" for code, meaning in exit_codes.MEANINGS.items()),
        formatter_class=_HelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        name: str, run: Callable[[argparse.Namespace], int], epilog: str | None = None
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(
            name,
            help=_about(run),
            description=_about(run),
            epilog=epilog,
            parents=[common],
            formatter_class=_HelpFormatter,
        )
        sub.set_defaults(run=run)
        return sub

    add("migrate", migrate_command)
    _add_serve_arguments(add("serve-webhooks", serve_webhooks_command))
    add("requeue-dead-events", requeue_dead_events_command)
    status = add("status", status_command)
    status.add_argument("--json", action="store_true", help="print one JSON object, for scripts")
    add("demo", demo_command)
    add("dev", dev_command, epilog="Other arguments are passed on to dagster dev (e.g. -p 3333).")
    add("stop", stop_command)
    emulator = add("emulator", emulator_command)
    emulator.add_argument("--host", default="127.0.0.1", help="address to listen on")
    emulator.add_argument("--port", type=int, default=8787, help="port to listen on")
    emulator.add_argument("--organizations", type=int, default=5, help="sample organizations to seed")
    emulator.add_argument("--users", type=int, default=12, help="sample users to seed")
    return parser


# Servers end with Ctrl-C or SIGTERM: that is their normal stop, not an interruption.
SERVER_COMMANDS = ("serve-webhooks", "dev", "emulator")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the orgsync console script."""
    from orgsync_pipeline import exit_codes
    from orgsync_pipeline.lifecycle import raise_on_sigterm

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.run is dev_command:
        args.dagster_args = [arg for arg in extra if arg != "--"]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    raise_on_sigterm()
    try:
        _configure_logging(args)
        exit_code: int = args.run(args)
        return exit_code
    except KeyboardInterrupt:
        if args.command in SERVER_COMMANDS:
            return exit_codes.OK
        print("orgsync: interrupted", file=sys.stderr)
        return exit_codes.INTERRUPTED
    except Exception as exc:
        return _report_failure(exc)
    finally:
        from orgsync_pipeline.store.database import dispose_engines

        dispose_engines()


def _configure_logging(args: argparse.Namespace) -> None:
    from orgsync_pipeline.logs import configure_logging

    try:
        log_format = load_settings().log_format
    except SettingsError:
        log_format = "text"  # the command itself reports the bad setting
    if not args.verbose:  # Dagster's notices about its own beta APIs are not the operator's business
        warnings.filterwarnings("ignore", message=".*(is currently in beta|is currently in preview).*")
    # The demo tells its own story; other commands log what they do.
    own_level = logging.WARNING if args.run is demo_command else logging.INFO
    configure_logging(verbose=args.verbose, log_format=log_format, own_level=own_level)


def _add_serve_arguments(serve: argparse.ArgumentParser) -> None:
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument(
        "--workers",
        type=_positive_int,
        default=1,
        help="processes receiving on the port, each with its own database pool (about one per core)",
    )
    serve.add_argument(
        "--apply",
        choices=WEBHOOK_APPLY_MODES,
        default=None,
        help="inline: this process applies events as they arrive (default, or ORGSYNC_WEBHOOK_APPLY); "
        "sensor: leave them to clerk_webhook_sensor's Dagster runs",
    )


def _positive_int(raw: str) -> int:
    if not raw.isdecimal() or int(raw) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {raw!r}")
    return int(raw)


def _report_failure(exc: Exception) -> int:
    """Print an expected failure in one or two lines; an unexpected one as a redacted traceback."""
    import traceback

    from orgsync_pipeline import exit_codes
    from orgsync_pipeline.failures import describe, redact

    problem = describe(exc)
    if problem is not None:
        print(f"orgsync: {problem.message}", file=sys.stderr)
        return problem.exit_code
    print(redact("".join(traceback.format_exception(exc))), file=sys.stderr, end="")
    print("orgsync: unexpected error (a bug); please report it with the lines above", file=sys.stderr)
    return exit_codes.FAILED


if __name__ == "__main__":
    sys.exit(main())
