"""Dagster resources: the Clerk Backend API and the application's PostgreSQL database."""

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import dagster as dg
from pydantic import Field
from sqlalchemy.engine import Engine

from orgsync_pipeline.clerk.client import ClerkClient, RetryPolicy
from orgsync_pipeline.settings import DEFAULT_CLERK_API_URL, SettingsError, is_set, load_settings
from orgsync_pipeline.store.database import engine_for, migrated_engine_for, resolve_database_url


class ClerkResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Clerk's Backend API, authenticated with the instance's secret key."""

    secret_key: str
    api_url: str = DEFAULT_CLERK_API_URL
    rate_limit: int | None = Field(
        default=None,
        description="Requests per 10 s that this process may send to Clerk, shared by every request "
        "(ORGSYNC_CLERK_RATE_LIMIT). Unset: Clerk's limit for the key, 1,000 for sk_live_ keys, else 100.",
    )

    @contextmanager
    def client(self, logger: logging.Logger | None = None) -> Iterator[ClerkClient]:
        """A client for one run or evaluation, closed afterwards."""
        if not self.secret_key.strip():
            raise SettingsError(
                "CLERK_SECRET_KEY is not set or empty: set it to the instance's secret key "
                "(sk_live_… or sk_test_…) from Clerk's dashboard, API keys"
            )
        settings = load_settings()
        retry = RetryPolicy(
            max_attempts=settings.clerk_max_attempts, max_elapsed=settings.clerk_retry_seconds
        )
        with ClerkClient(
            self.secret_key,
            self.api_url,
            retry=retry,
            logger=logger or dg.get_dagster_logger(),
            rate_limit=self.rate_limit,
        ) as client:
            yield client


class PostgresResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The application's PostgreSQL database; the embedded server when no URL is configured."""

    database_url: str = ""
    auto_migrate: bool = Field(
        default=True,
        description="Whether a job applies missing migrations itself before it writes "
        "(ORGSYNC_AUTO_MIGRATE); off, it fails naming `orgsync migrate`.",
    )

    def engine(self) -> Engine:
        """A pooled engine for this process; it runs no DDL (sensors and checks use it)."""
        return engine_for(self._url())

    def migrated_engine(self) -> Engine:
        """The engine once the schema is current: a job's first step calls this before it writes."""
        return migrated_engine_for(self._url(), auto_migrate=self.auto_migrate)

    def _url(self) -> str:
        return resolve_database_url(self.database_url or None, load_settings().home)


def resources_from_environment() -> dict[str, dg.ConfigurableResource[Any]]:
    """Resources wired to environment variables with ``EnvVar``, so secrets never show in the UI."""
    return {
        "clerk": ClerkResource(
            # Unset, the step fails with our message naming the variable instead of a config error.
            secret_key=dg.EnvVar("CLERK_SECRET_KEY") if is_set("CLERK_SECRET_KEY") else "",
            api_url=dg.EnvVar("CLERK_API_URL") if is_set("CLERK_API_URL") else DEFAULT_CLERK_API_URL,
            rate_limit=(
                dg.EnvVar.int("ORGSYNC_CLERK_RATE_LIMIT") if is_set("ORGSYNC_CLERK_RATE_LIMIT") else None
            ),
        ),
        "postgres": PostgresResource(
            database_url=dg.EnvVar("DATABASE_URL") if is_set("DATABASE_URL") else "",
            auto_migrate=load_settings().auto_migrate,
        ),
    }
