"""The ``orgsync`` command: migrate, serve-webhooks, requeue-dead-events, demo, dev, emulator."""

import argparse
import logging
import sys
import time

from orgsync_pipeline.settings import SettingsError, load_settings


def migrate_command(args: argparse.Namespace) -> int:
    """Apply the migrations in ``sql/`` to DATABASE_URL (or the embedded database)."""
    import sqlalchemy as sa

    from orgsync_pipeline.store.database import migrate, resolve_database_url

    settings = load_settings()
    url = resolve_database_url(
        settings.database_url.reveal() if settings.database_url else None, settings.home
    )
    engine = sa.create_engine(url)
    try:
        applied = migrate(engine)
    finally:
        engine.dispose()
    print(f"applied {', '.join(applied)}" if applied else "database is up to date")
    return 0


def serve_webhooks_command(args: argparse.Namespace) -> int:
    """Receive Clerk's webhooks: verify each Svix signature and commit the event to the inbox."""
    from orgsync_pipeline.webhooks import serve

    serve(args.host, args.port)
    return 0


def requeue_dead_events_command(args: argparse.Namespace) -> int:
    """Give dead webhook events a fresh start, once the cause of their failure is fixed."""
    from orgsync_pipeline.store.database import engine_for, resolve_database_url
    from orgsync_pipeline.store.inbox import requeue_dead

    settings = load_settings()
    url = resolve_database_url(
        settings.database_url.reveal() if settings.database_url else None, settings.home
    )
    with engine_for(url).begin() as conn:
        count = requeue_dead(conn)
    print(f"requeued {count} dead webhook events")
    return 0


def demo_command(args: argparse.Namespace) -> int:
    """Sync the built-in Clerk emulator into the embedded PostgreSQL and show what landed."""
    from orgsync_pipeline.demo import run_demo

    return run_demo()


def dev_command(args: argparse.Namespace) -> int:
    """``dagster dev`` on orgsync, with the emulator when no Clerk key is configured."""
    from orgsync_pipeline.demo import run_dev

    return run_dev(args.dagster_args)


def emulator_command(args: argparse.Namespace) -> int:
    """Serve a seeded Clerk emulator until interrupted."""
    from orgsync_pipeline.clerk.emulator import ClerkEmulator

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="orgsync", description="Keep Postgres in step with Clerk.")
    commands = parser.add_subparsers(dest="command", required=True)

    commands.add_parser("migrate", help=migrate_command.__doc__).set_defaults(run=migrate_command)
    serve = commands.add_parser("serve-webhooks", help=serve_webhooks_command.__doc__)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=serve_webhooks_command)
    commands.add_parser("requeue-dead-events", help=requeue_dead_events_command.__doc__).set_defaults(
        run=requeue_dead_events_command
    )
    commands.add_parser("demo", help=demo_command.__doc__).set_defaults(run=demo_command)

    dev = commands.add_parser(
        "dev",
        help=dev_command.__doc__,
        epilog="Other arguments are passed on to `dagster dev` (e.g. -p 3333).",
    )
    dev.set_defaults(run=dev_command)

    emulator = commands.add_parser("emulator", help=emulator_command.__doc__)
    emulator.add_argument("--host", default="127.0.0.1")
    emulator.add_argument("--port", type=int, default=8787)
    emulator.add_argument("--organizations", type=int, default=5)
    emulator.add_argument("--users", type=int, default=12)
    emulator.set_defaults(run=emulator_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``orgsync`` console script."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.run is dev_command:
        args.dagster_args = [arg for arg in extra if arg != "--"]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    # The demo tells its own story; other commands log what they do.
    handler = logging.StreamHandler()
    handler.setLevel(logging.WARNING if args.run is demo_command else logging.INFO)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", handlers=[handler])
    try:
        return args.run(args)
    except SettingsError as exc:
        print(f"orgsync: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
