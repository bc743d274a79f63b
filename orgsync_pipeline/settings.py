"""Environment → typed settings. The only module that reads ``os.environ``."""

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from orgsync_pipeline.clerk.paging import DEFAULT_MAX_IN_FLIGHT

DEFAULT_CLERK_API_URL = "https://api.clerk.com/v1"
DEFAULT_FULL_SYNC_CRON = "0 * * * *"
DEFAULT_MAX_DELETE_FRACTION = 0.2
DEFAULT_CLERK_MAX_ATTEMPTS = 8
DEFAULT_CLERK_RETRY_SECONDS = 300.0
DEFAULT_SYNC_RATE_PER_MINUTE = 6
DEFAULT_WEBHOOK_SENSOR_INTERVAL = 5
DEFAULT_WEBHOOK_MAX_ATTEMPTS = 8
DEFAULT_WEBHOOK_BATCH_SIZE = 500
WEBHOOK_APPLY_MODES = ("inline", "sensor")
DEFAULT_WEBHOOK_BACKSTOP_SECONDS = 30.0
DEFAULT_STEP_RETRY_DELAY_SECONDS = 5.0

LOG_FORMATS = ("text", "json")

APP_ROLES = ("owner", "admin", "member", "viewer")
DEFAULT_ROLE_MAP: dict[str, str] = {
    "org:owner": "owner",
    "org:admin": "admin",
    "org:member": "member",
    "org:viewer": "viewer",
    # Keys from instances created before Clerk prefixed role keys with "org:".
    "admin": "admin",
    "basic_member": "member",
    "guest_member": "viewer",
}


class SettingsError(ValueError):
    """A setting in the environment has a value orgsync cannot use."""


class Secret:
    """A string that never shows itself in ``str``, ``repr``, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__


@dataclass(frozen=True)
class Settings:
    """Everything orgsync reads from its environment, parsed and checked once."""

    database_url: Secret | None = None
    clerk_secret_key: Secret | None = None
    clerk_api_url: str = DEFAULT_CLERK_API_URL
    role_map: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ROLE_MAP))
    max_delete_fraction: float = DEFAULT_MAX_DELETE_FRACTION
    full_sync_cron: str = DEFAULT_FULL_SYNC_CRON
    clerk_max_attempts: int = DEFAULT_CLERK_MAX_ATTEMPTS
    clerk_retry_seconds: float = DEFAULT_CLERK_RETRY_SECONDS
    # Requests per 10 s for the whole process; None: Clerk's limit for the key (sk_live_ 1,000, else 100).
    clerk_rate_limit: int | None = None
    # Pages a listing fetches ahead; each holds one parsed page in memory.
    clerk_max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    # On-demand sync (POST /sync/…): session-token verification, per-user limit, browser origins.
    clerk_jwt_key: str | None = None
    authorized_parties: tuple[str, ...] = ()
    sync_rate_per_minute: int = DEFAULT_SYNC_RATE_PER_MINUTE
    cors_origins: tuple[str, ...] = ()
    webhook_secret: Secret | None = None
    webhook_sensor_interval: int = DEFAULT_WEBHOOK_SENSOR_INTERVAL
    webhook_max_attempts: int = DEFAULT_WEBHOOK_MAX_ATTEMPTS
    webhook_batch_size: int = DEFAULT_WEBHOOK_BATCH_SIZE
    webhook_apply: str = "inline"
    webhook_backstop_seconds: float = DEFAULT_WEBHOOK_BACKSTOP_SECONDS
    home: Path = Path(".orgsync")
    log_format: str = "text"
    # Whether a job (or the receiver) applies pending migrations itself, or fails naming `orgsync migrate`.
    auto_migrate: bool = True
    # Delay before a job's first retry of a step that failed for a transient cause (doubled for the second).
    step_retry_delay_seconds: float = DEFAULT_STEP_RETRY_DELAY_SECONDS


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read orgsync's settings from ``environ`` (default: the process environment)."""
    env = os.environ if environ is None else environ
    return Settings(
        database_url=_secret(env, "DATABASE_URL"),
        clerk_secret_key=_secret(env, "CLERK_SECRET_KEY"),
        clerk_api_url=(env.get("CLERK_API_URL") or DEFAULT_CLERK_API_URL).rstrip("/"),
        role_map=parse_role_map(env.get("ORGSYNC_ROLE_MAP")),
        max_delete_fraction=_number(
            env, "ORGSYNC_MAX_DELETE_FRACTION", DEFAULT_MAX_DELETE_FRACTION, minimum=0, maximum=1
        ),
        full_sync_cron=env.get("ORGSYNC_FULL_SYNC_CRON") or DEFAULT_FULL_SYNC_CRON,
        clerk_max_attempts=int(
            _number(env, "ORGSYNC_CLERK_MAX_ATTEMPTS", DEFAULT_CLERK_MAX_ATTEMPTS, minimum=1)
        ),
        clerk_retry_seconds=_number(
            env, "ORGSYNC_CLERK_RETRY_SECONDS", DEFAULT_CLERK_RETRY_SECONDS, minimum=0
        ),
        clerk_rate_limit=_optional_count(env, "ORGSYNC_CLERK_RATE_LIMIT"),
        clerk_max_in_flight=int(
            _number(env, "ORGSYNC_CLERK_MAX_IN_FLIGHT", DEFAULT_MAX_IN_FLIGHT, minimum=1)
        ),
        # A PEM in one environment line often has its newlines written as \n.
        clerk_jwt_key=(env.get("CLERK_JWT_KEY") or "").replace("\\n", "\n").strip() or None,
        authorized_parties=_csv(env, "ORGSYNC_AUTHORIZED_PARTIES"),
        sync_rate_per_minute=int(
            _number(env, "ORGSYNC_SYNC_RATE_PER_MINUTE", DEFAULT_SYNC_RATE_PER_MINUTE, minimum=1)
        ),
        cors_origins=_csv(env, "ORGSYNC_CORS_ORIGINS"),
        # CLERK_WEBHOOK_SIGNING_SECRET is the name Clerk's docs use now; both are accepted.
        webhook_secret=_secret(env, "CLERK_WEBHOOK_SECRET") or _secret(env, "CLERK_WEBHOOK_SIGNING_SECRET"),
        webhook_sensor_interval=int(
            _number(env, "ORGSYNC_WEBHOOK_SENSOR_INTERVAL", DEFAULT_WEBHOOK_SENSOR_INTERVAL, minimum=1)
        ),
        webhook_max_attempts=int(
            _number(env, "ORGSYNC_WEBHOOK_MAX_ATTEMPTS", DEFAULT_WEBHOOK_MAX_ATTEMPTS, minimum=1)
        ),
        webhook_batch_size=int(
            _number(env, "ORGSYNC_WEBHOOK_BATCH_SIZE", DEFAULT_WEBHOOK_BATCH_SIZE, minimum=1)
        ),
        webhook_apply=parse_webhook_apply_mode(env.get("ORGSYNC_WEBHOOK_APPLY")),
        webhook_backstop_seconds=_number(
            env, "ORGSYNC_WEBHOOK_BACKSTOP_SECONDS", DEFAULT_WEBHOOK_BACKSTOP_SECONDS, minimum=0
        ),
        home=Path(env.get("ORGSYNC_HOME") or ".orgsync").absolute(),
        log_format=_log_format(env.get("ORGSYNC_LOG_FORMAT")),
        auto_migrate=parse_switch("ORGSYNC_AUTO_MIGRATE", env.get("ORGSYNC_AUTO_MIGRATE"), default=True),
        step_retry_delay_seconds=_number(
            env, "ORGSYNC_STEP_RETRY_DELAY_SECONDS", DEFAULT_STEP_RETRY_DELAY_SECONDS, minimum=0
        ),
    )


def definition_settings() -> Settings:
    """The settings the code location is built from, read once when Dagster loads it.

    ``orgsync_pipeline.definitions`` calls this once: the schedule's cron and the sensor's interval
    are fixed when a definition is made, and the resources take their non-secret values from here
    (secrets go to them as ``dg.EnvVar``, read when a run starts). No other module reads the
    environment at import time.
    """
    return load_settings()


def is_set(name: str) -> bool:
    """Whether environment variable ``name`` is set to a non-empty value."""
    return bool(os.environ.get(name))


def parse_role_map(raw: str | None) -> dict[str, str]:
    """The default Clerk-role → app-role map, extended or overridden by ``ORGSYNC_ROLE_MAP`` (JSON)."""
    role_map = dict(DEFAULT_ROLE_MAP)
    if not raw:
        return role_map
    try:
        extra = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SettingsError(f"ORGSYNC_ROLE_MAP is not valid JSON: {exc.msg} at position {exc.pos}") from None
    if not isinstance(extra, dict):
        raise SettingsError('ORGSYNC_ROLE_MAP must be a JSON object such as {"org:billing": "member"}')
    for clerk_role, app_role in extra.items():
        if app_role not in APP_ROLES:
            raise SettingsError(
                f"ORGSYNC_ROLE_MAP maps {clerk_role!r} to {app_role!r}; app roles are {', '.join(APP_ROLES)}"
            )
    role_map.update(extra)
    return role_map


def parse_webhook_apply_mode(raw: str | None) -> str:
    """``ORGSYNC_WEBHOOK_APPLY``: inline (the default) or sensor, in any case."""
    mode = (raw or "inline").strip().lower()
    if mode not in WEBHOOK_APPLY_MODES:
        raise SettingsError(
            f"ORGSYNC_WEBHOOK_APPLY must be inline (the receiver applies events itself) or sensor "
            f"(every write inside a Dagster run), got {raw!r}"
        )
    return mode


def parse_switch(name: str, raw: str | None, *, default: bool) -> bool:
    """An on/off setting: 1/true/yes/on or 0/false/no/off (any case); unset or empty: ``default``."""
    value = (raw or "").strip().lower()
    if not value:
        return default
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise SettingsError(f"{name} must be on or off (1/0, true/false), got {raw!r}")


def _log_format(raw: str | None) -> str:
    log_format = (raw or "text").strip().lower()
    if log_format not in LOG_FORMATS:
        raise SettingsError(f"ORGSYNC_LOG_FORMAT must be text or json, got {raw!r}")
    return log_format


def _secret(env: Mapping[str, str], name: str) -> Secret | None:
    value = env.get(name)
    return Secret(value) if value else None


def _csv(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    """A comma-separated list; origins lose a trailing slash (browsers send none)."""
    return tuple(item.strip().rstrip("/") for item in (env.get(name) or "").split(",") if item.strip())


def _optional_count(env: Mapping[str, str], name: str) -> int | None:
    """A positive whole number, or None when unset."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return None
    if not raw.isdecimal() or int(raw) < 1:
        raise SettingsError(f"{name} must be a whole number of at least 1, got {raw!r}")
    return int(raw)


def _number(
    env: Mapping[str, str], name: str, default: float, *, minimum: float, maximum: float | None = None
) -> float:
    raw = env.get(name)
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < minimum or (maximum is not None and value > maximum):
        bounds = f"between {minimum:g} and {maximum:g}" if maximum is not None else f"at least {minimum:g}"
        raise SettingsError(f"{name} must be {bounds}, got {raw!r}")
    return value
