"""Dagster resources: the Clerk Backend API, the application's PostgreSQL database, the sync policy
(role map, delete limit) and the webhook apply settings.

Every setting a run uses is a described field of one of them, so the Dagster UI shows it.
``resources_from_environment`` fills them from the settings read when the code location loads;
secrets go in as ``dg.EnvVar`` (read when a run starts, never shown).
"""

import dataclasses
import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field
from sqlalchemy.engine import Engine

from orgsync_pipeline.clerk.client import ClerkClient, RetryPolicy
from orgsync_pipeline.clerk.paging import DEFAULT_MAX_IN_FLIGHT
from orgsync_pipeline.settings import (
    DEFAULT_CLERK_API_URL,
    DEFAULT_CLERK_MAX_ATTEMPTS,
    DEFAULT_CLERK_RETRY_SECONDS,
    DEFAULT_MAX_DELETE_FRACTION,
    DEFAULT_WEBHOOK_BACKSTOP_SECONDS,
    DEFAULT_WEBHOOK_BATCH_SIZE,
    DEFAULT_WEBHOOK_MAX_ATTEMPTS,
    Settings,
    SettingsError,
    parse_role_map,
    parse_webhook_apply_mode,
)
from orgsync_pipeline.store.database import engine_for, migrated_engine_for, resolve_database_url


class ClerkResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """Clerk's Backend API, authenticated with the instance's secret key."""

    secret_key: str = Field(
        description="The instance's secret key (CLERK_SECRET_KEY, sk_live_… or sk_test_…); "
        "set from the environment, never shown."
    )
    api_url: str = Field(default=DEFAULT_CLERK_API_URL, description="Clerk's Backend API (CLERK_API_URL).")
    rate_limit: int | None = Field(
        default=None,
        description="Requests per 10 s that this process may send to Clerk, shared by every request "
        "(ORGSYNC_CLERK_RATE_LIMIT). Unset: Clerk's limit for the key, 1,000 for sk_live_ keys, else 100.",
    )
    max_in_flight: int = Field(
        default=DEFAULT_MAX_IN_FLIGHT,
        ge=1,
        description="Pages a listing fetches ahead once its size is known, under the rate limit "
        "(ORGSYNC_CLERK_MAX_IN_FLIGHT). Each holds one parsed page (about 2 MB of memberships) in memory.",
    )
    max_attempts: int = Field(
        default=DEFAULT_CLERK_MAX_ATTEMPTS,
        ge=1,
        description="Attempts per Clerk request before a transient failure (429, 5xx, a lost "
        "connection) fails the step (ORGSYNC_CLERK_MAX_ATTEMPTS).",
    )
    retry_seconds: float = Field(
        default=DEFAULT_CLERK_RETRY_SECONDS,
        ge=0,
        description="Seconds one Clerk request may spend retrying in all (ORGSYNC_CLERK_RETRY_SECONDS).",
    )

    @contextmanager
    def client(self, logger: logging.Logger | None = None) -> Iterator[ClerkClient]:
        """A client for one run or evaluation, closed afterwards."""
        if not self.secret_key.strip():
            raise SettingsError(
                "CLERK_SECRET_KEY is not set or empty: set it to the instance's secret key "
                "(sk_live_… or sk_test_…) from Clerk's dashboard, API keys"
            )
        retry = RetryPolicy(max_attempts=self.max_attempts, max_elapsed=self.retry_seconds)
        with ClerkClient(
            self.secret_key,
            self.api_url,
            retry=retry,
            logger=logger or dg.get_dagster_logger(),
            rate_limit=self.rate_limit,
            max_in_flight=self.max_in_flight,
        ) as client:
            yield client


class PostgresResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The application's PostgreSQL database; the embedded server when no URL is configured."""

    database_url: str = Field(
        default="",
        description="The application database (DATABASE_URL); set from the environment, never shown. "
        "Empty: the embedded PostgreSQL under `home`.",
    )
    auto_migrate: bool = Field(
        default=True,
        description="Whether a job applies missing migrations itself before it writes "
        "(ORGSYNC_AUTO_MIGRATE); off, it fails naming `orgsync migrate`.",
    )
    home: str = Field(
        default=".orgsync",
        description="orgsync's state directory (ORGSYNC_HOME): the embedded PostgreSQL lives in its "
        "pgdata when no database URL is set.",
    )

    def engine(self) -> Engine:
        """A pooled engine for this process; it runs no DDL (sensors and checks use it)."""
        return engine_for(self._url())

    def migrated_engine(self) -> Engine:
        """The engine once the schema is current: a job's first step calls this before it writes."""
        return migrated_engine_for(self._url(), auto_migrate=self.auto_migrate)

    def _url(self) -> str:
        return resolve_database_url(self.database_url or None, Path(self.home).absolute())


class SyncPolicyResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """What the full sync and the webhook apply may write: the role map and the delete limit."""

    role_map: str = Field(
        default="",
        description="Clerk role key → app role (owner, admin, member, viewer), a JSON object added to "
        "and overriding the defaults (ORGSYNC_ROLE_MAP). A membership with an unmapped role is "
        "quarantined.",
    )
    max_delete_fraction: float = Field(
        default=DEFAULT_MAX_DELETE_FRACTION,
        ge=0,
        le=1,
        description="The largest share of a table one full sync may delete, 0 to 1 "
        "(ORGSYNC_MAX_DELETE_FRACTION); a run may raise it once with its own config.",
    )

    def settings(self, *, max_delete_fraction: float | None = None) -> Settings:
        """The settings the domain functions take; ``max_delete_fraction`` overrides the limit for
        one run. A bad role map raises the same one-line ``SettingsError`` as the environment."""
        if max_delete_fraction is None:
            max_delete_fraction = self.max_delete_fraction
        return dataclasses.replace(
            Settings(), role_map=parse_role_map(self.role_map), max_delete_fraction=max_delete_fraction
        )


class WebhookApplyResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """How webhook events are applied: who applies them, when the sensor steps in, retries, batches."""

    mode: str = Field(
        default="inline",
        description="inline: the receivers apply events themselves and the sensor is the backstop; "
        "sensor: every event is applied by a clerk_webhook_apply run (ORGSYNC_WEBHOOK_APPLY).",
    )
    backstop_seconds: float = Field(
        default=DEFAULT_WEBHOOK_BACKSTOP_SECONDS,
        ge=0,
        description="In inline mode, how long an event stays pending before the sensor launches a run "
        "for it (ORGSYNC_WEBHOOK_BACKSTOP_SECONDS).",
    )
    max_attempts: int = Field(
        default=DEFAULT_WEBHOOK_MAX_ATTEMPTS,
        ge=1,
        description="Attempts per event before a transient failure leaves it `dead` "
        "(ORGSYNC_WEBHOOK_MAX_ATTEMPTS).",
    )
    batch_size: int = Field(
        default=DEFAULT_WEBHOOK_BATCH_SIZE,
        ge=1,
        description="Events one transaction of an apply run claims and applies (ORGSYNC_WEBHOOK_BATCH_SIZE).",
    )

    def settings(self, policy: SyncPolicyResource | None = None) -> Settings:
        """The settings ``apply_pending_events`` takes: ``policy``'s and these (the sensor, which
        applies nothing, passes no policy)."""
        return dataclasses.replace(
            policy.settings() if policy is not None else Settings(),
            webhook_apply=parse_webhook_apply_mode(self.mode),
            webhook_backstop_seconds=self.backstop_seconds,
            webhook_max_attempts=self.max_attempts,
            webhook_batch_size=self.batch_size,
        )


def resources_from_environment(settings: Settings) -> dict[str, dg.ConfigurableResource[Any]]:
    """The resources for ``settings`` (``definition_settings()``): secrets as ``EnvVar``, so they never
    show in the UI and are read when a run starts; every other value as parsed and checked."""
    return {
        "clerk": ClerkResource(
            # Unset, the step fails with our message naming the variable instead of a config error.
            secret_key=dg.EnvVar("CLERK_SECRET_KEY") if settings.clerk_secret_key else "",
            api_url=settings.clerk_api_url,
            rate_limit=settings.clerk_rate_limit,
            max_in_flight=settings.clerk_max_in_flight,
            max_attempts=settings.clerk_max_attempts,
            retry_seconds=settings.clerk_retry_seconds,
        ),
        "postgres": PostgresResource(
            database_url=dg.EnvVar("DATABASE_URL") if settings.database_url else "",
            auto_migrate=settings.auto_migrate,
            home=str(settings.home),
        ),
        "sync_policy": SyncPolicyResource(
            role_map=json.dumps(settings.role_map),
            max_delete_fraction=settings.max_delete_fraction,
        ),
        "webhook_apply": WebhookApplyResource(
            mode=settings.webhook_apply,
            backstop_seconds=settings.webhook_backstop_seconds,
            max_attempts=settings.webhook_max_attempts,
            batch_size=settings.webhook_batch_size,
        ),
    }
