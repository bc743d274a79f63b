"""Environment → typed settings: defaults, role map, delete fraction, secrets, URL normalisation."""

from pathlib import Path

import pytest

from orgsync_pipeline.settings import (
    DEFAULT_CLERK_API_URL,
    DEFAULT_FULL_SYNC_CRON,
    DEFAULT_MAX_DELETE_FRACTION,
    DEFAULT_ROLE_MAP,
    Secret,
    SettingsError,
    load_settings,
    parse_role_map,
)


def test_defaults_from_an_empty_environment() -> None:
    """With nothing set, every setting takes its documented default."""
    settings = load_settings({})

    assert settings.database_url is None
    assert settings.clerk_secret_key is None
    assert settings.clerk_api_url == DEFAULT_CLERK_API_URL == "https://api.clerk.com/v1"
    assert settings.role_map == DEFAULT_ROLE_MAP
    assert settings.max_delete_fraction == DEFAULT_MAX_DELETE_FRACTION == 0.2
    assert settings.full_sync_cron == DEFAULT_FULL_SYNC_CRON
    assert settings.home == Path(".orgsync").absolute()


def test_empty_values_count_as_unset() -> None:
    """Empty strings fall back to defaults instead of producing empty secrets or a zero fraction."""
    settings = load_settings(
        {
            "DATABASE_URL": "",
            "CLERK_SECRET_KEY": "",
            "CLERK_API_URL": "",
            "ORGSYNC_ROLE_MAP": "",
            "ORGSYNC_MAX_DELETE_FRACTION": "",
        }
    )

    assert settings.database_url is None
    assert settings.clerk_secret_key is None
    assert settings.clerk_api_url == DEFAULT_CLERK_API_URL
    assert settings.role_map == DEFAULT_ROLE_MAP
    assert settings.max_delete_fraction == DEFAULT_MAX_DELETE_FRACTION


def test_values_are_read_from_the_environment(tmp_path: Path) -> None:
    """Set values are parsed into their typed fields."""
    settings = load_settings(
        {
            "DATABASE_URL": "postgresql://u:pw@db/app",
            "CLERK_SECRET_KEY": "sk_test_abc",
            "ORGSYNC_FULL_SYNC_CRON": "*/5 * * * *",
            "ORGSYNC_HOME": str(tmp_path),
        }
    )

    assert settings.database_url is not None
    assert settings.database_url.reveal() == "postgresql://u:pw@db/app"
    assert settings.clerk_secret_key is not None
    assert settings.clerk_secret_key.reveal() == "sk_test_abc"
    assert settings.full_sync_cron == "*/5 * * * *"
    assert settings.home == tmp_path


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://api.clerk.com/v1/", "https://api.clerk.com/v1"),
        ("http://127.0.0.1:8000/v1//", "http://127.0.0.1:8000/v1"),
        ("http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1"),
    ],
)
def test_clerk_api_url_trailing_slash_is_stripped(raw: str, expected: str) -> None:
    """CLERK_API_URL loses trailing slashes so paths can be appended with one '/'."""
    assert load_settings({"CLERK_API_URL": raw}).clerk_api_url == expected


def test_default_role_map() -> None:
    """The defaults cover Clerk's org: keys and the legacy unprefixed keys."""
    assert parse_role_map(None) == {
        "org:owner": "owner",
        "org:admin": "admin",
        "org:member": "member",
        "org:viewer": "viewer",
        "admin": "admin",
        "basic_member": "member",
        "guest_member": "viewer",
    }


def test_role_map_extends_and_overrides_defaults() -> None:
    """ORGSYNC_ROLE_MAP adds custom roles and may remap a default one; other defaults stay."""
    role_map = load_settings(
        {"ORGSYNC_ROLE_MAP": '{"org:billing": "member", "org:member": "viewer"}'}
    ).role_map

    assert role_map["org:billing"] == "member"
    assert role_map["org:member"] == "viewer"
    assert role_map["org:admin"] == "admin"
    assert role_map["basic_member"] == "member"


def test_role_map_does_not_leak_between_calls() -> None:
    """Extending the map for one call does not change the module's defaults."""
    parse_role_map('{"org:billing": "member"}')

    assert "org:billing" not in DEFAULT_ROLE_MAP
    assert "org:billing" not in parse_role_map(None)


@pytest.mark.parametrize(
    ("raw", "mentions"),
    [
        ("{not json", "not valid JSON"),
        ('["org:billing", "member"]', "JSON object"),
        ('"member"', "JSON object"),
        ('{"org:billing": "superuser"}', "'superuser'"),
        ('{"org:billing": null}', "'org:billing'"),
        ('{"org:billing": 1}', "'org:billing'"),
    ],
)
def test_invalid_role_map_names_the_setting(raw: str, mentions: str) -> None:
    """Bad JSON, a non-object, or an unknown app role raise SettingsError naming ORGSYNC_ROLE_MAP."""
    with pytest.raises(SettingsError) as excinfo:
        load_settings({"ORGSYNC_ROLE_MAP": raw})

    assert "ORGSYNC_ROLE_MAP" in str(excinfo.value)
    assert mentions in str(excinfo.value)


@pytest.mark.parametrize(
    ("raw", "expected"), [("0", 0.0), ("1", 1.0), ("0.5", 0.5), ("0.05", 0.05), (" 0.3 ", 0.3)]
)
def test_max_delete_fraction_parses_within_bounds(raw: str, expected: float) -> None:
    """ORGSYNC_MAX_DELETE_FRACTION accepts numbers from 0 to 1 inclusive."""
    assert load_settings({"ORGSYNC_MAX_DELETE_FRACTION": raw}).max_delete_fraction == expected


@pytest.mark.parametrize("raw", ["-0.1", "1.01", "20", "abc", "20%", "inf", "-inf", "nan", "NaN"])
def test_max_delete_fraction_rejects_bad_values(raw: str) -> None:
    """Out-of-range, non-numeric or NaN fractions raise SettingsError naming the setting and the value
    (NaN would switch off the delete guard: every comparison with it is false)."""
    with pytest.raises(SettingsError) as excinfo:
        load_settings({"ORGSYNC_MAX_DELETE_FRACTION": raw})

    assert "ORGSYNC_MAX_DELETE_FRACTION" in str(excinfo.value)
    assert repr(raw) in str(excinfo.value)


def test_secret_never_shows_its_value() -> None:
    """str, repr, f-strings and the Settings repr all mask secrets; reveal() returns them."""
    settings = load_settings(
        {"CLERK_SECRET_KEY": "sk_live_supersecret", "DATABASE_URL": "postgresql://u:hunter2@db/app"}
    )
    secret = settings.clerk_secret_key
    assert isinstance(secret, Secret)

    for shown in (str(secret), repr(secret), f"{secret}", f"{secret!r}", repr(settings), str(settings)):
        assert "supersecret" not in shown
        assert "hunter2" not in shown
    assert "**" in str(secret)
    assert secret.reveal() == "sk_live_supersecret"


def test_secret_has_no_instance_dict() -> None:
    """A Secret carries no __dict__, so vars() and attribute dumps cannot expose the value."""
    secret = Secret("sk_test_hidden")

    with pytest.raises(TypeError):
        vars(secret)


def test_clerk_rate_limit_is_read_from_the_environment() -> None:
    """``ORGSYNC_CLERK_RATE_LIMIT`` in requests per 10 s; unset, the client derives it from the key."""
    from orgsync_pipeline.clerk.client import ClerkClient
    from orgsync_pipeline.resources import ClerkResource

    assert load_settings({}).clerk_rate_limit is None
    assert load_settings({"ORGSYNC_CLERK_RATE_LIMIT": "200"}).clerk_rate_limit == 200
    assert load_settings({"ORGSYNC_CLERK_RATE_LIMIT": " 1000 "}).clerk_rate_limit == 1000
    for raw in ("0", "-5", "1.5", "fast"):
        with pytest.raises(SettingsError, match="ORGSYNC_CLERK_RATE_LIMIT must be a whole number"):
            load_settings({"ORGSYNC_CLERK_RATE_LIMIT": raw})

    url = "http://127.0.0.1:9/v1"  # never contacted
    with ClerkClient("sk_live_x", url) as live, ClerkClient("sk_test_x", url) as dev:
        assert (live.limiter.limit, dev.limiter.limit) == (1000, 100)
    with ClerkResource(secret_key="sk_live_x", api_url=url, rate_limit=200).client() as client:
        assert client.limiter.limit == 200
    with ClerkResource(secret_key="sk_live_x", api_url=url).client() as client:
        assert client.limiter.limit == 1000


def test_clerk_max_in_flight_is_read_from_the_environment() -> None:
    """``ORGSYNC_CLERK_MAX_IN_FLIGHT``: pages a listing fetches ahead, at least one."""
    assert load_settings({}).clerk_max_in_flight == 32
    assert load_settings({"ORGSYNC_CLERK_MAX_IN_FLIGHT": "8"}).clerk_max_in_flight == 8
    with pytest.raises(SettingsError, match="ORGSYNC_CLERK_MAX_IN_FLIGHT"):
        load_settings({"ORGSYNC_CLERK_MAX_IN_FLIGHT": "0"})


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, True), ("", True), ("off", False), ("0", False), ("ON", True)]
)
def test_auto_migrate_is_a_switch(raw: str | None, expected: bool) -> None:
    """ORGSYNC_AUTO_MIGRATE defaults to on and reads on/off, 1/0, true/false."""
    env = {} if raw is None else {"ORGSYNC_AUTO_MIGRATE": raw}
    assert load_settings(env).auto_migrate is expected


def test_auto_migrate_rejects_other_values() -> None:
    with pytest.raises(SettingsError, match="ORGSYNC_AUTO_MIGRATE"):
        load_settings({"ORGSYNC_AUTO_MIGRATE": "sometimes"})
