"""Settings: validation, defaults, and secrets kept out of every text."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bot.app.services import queue_config
from bot.app.settings import VARIABLES, Secret, Settings, SettingsError, Variable, load_settings
from bot.images import ImageLimits
from bot.jobs import QueueConfig

TOKEN = "settings-test-token-Zq81"
KEY = "settings-test-key-Xv42"
BASE_ENV = {"DISCORD_TOKEN": TOKEN, "ONEMIN_API_KEY": KEY}
ROOT = Path(__file__).resolve().parents[1]
# In .env.example but not settings: read by bot.i18n and bot.images.compare themselves.
NOT_SETTINGS = frozenset({"I18N_STRICT", "COMPARE_LABEL_FONT"})
# Documented in words, not as a value: a spool beside the database, 1min.ai's S3 hosts.
IN_WORDS = frozenset({"SPOOL_DIR", "ONEMIN_RESULT_HOSTS"})
README_NAMES = re.compile(r"`[A-Z][A-Z0-9_]+`( / `[A-Z][A-Z0-9_]+`)*")


def env(**overrides: str) -> dict[str, str]:
    return {**BASE_ENV, **overrides}


def env_example() -> dict[str, str]:
    """Each variable of ``.env.example`` and the value it shows (its default)."""
    lines = (ROOT / ".env.example").read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line and not line.startswith("#")]
    return {name: value for name, value in pairs}


def readme_defaults() -> dict[str, str]:
    """Each variable of the README's configuration tables and its Default cell (a row of
    two variables, ``A`` / ``B``, gives ``a`` / ``b``, or one cell for both)."""
    defaults: dict[str, str] = {}
    for line in (ROOT / "README.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not README_NAMES.fullmatch(cells[0]):
            continue
        names = cells[0].replace("`", "").split(" / ")
        values = cells[1].split(" / ")
        defaults.update(zip(names, values if len(values) > 1 else values * len(names), strict=True))
    return defaults


def test_defaults_match_the_product_table() -> None:
    """Only the two secrets set: every other value is the README's documented default."""
    s = load_settings(env())
    assert s.onemin_api_base == "https://api.1min.ai"
    assert s.database_path == Path("data/upscaler.db")
    assert s.database_engine == "sqlite"
    assert s.dev_guild_id is None
    assert (s.upscale_cost, s.default_user_limit, s.limit_period) == (1, 10, "daily")
    assert (s.max_concurrent_jobs, s.max_jobs_per_user) == (4, 2)
    assert s.moderator_role_ids == frozenset()
    assert s.log_level == "INFO"
    assert s.upscale_timeout == 180.0
    assert s.onemin_requests_per_minute == 180
    assert (s.shard_count, s.shard_ids) == (None, None)
    assert s.allowed_guild_ids == frozenset()
    assert (s.total_budget, s.total_budget_period) == (0, "monthly")
    assert s.alert_channel_id is None
    assert s.startup_retry == 60.0


def test_only_the_secrets_set_gives_the_dataclass_defaults() -> None:
    """load_settings adds no default of its own: the dataclass's are the only ones."""
    assert load_settings(env()) == Settings(discord_token=Secret(TOKEN), onemin_api_key=Secret(KEY))


def test_every_field_but_the_timings_has_one_variable() -> None:
    """Each Settings field is read from exactly one variable; no variable is read twice."""
    fields = [f.name for f in dataclasses.fields(Settings) if f.name != "timings"]
    assert sorted(v.field for v in VARIABLES) == sorted(fields)
    assert len({v.name for v in VARIABLES}) == len(VARIABLES)


def test_the_queue_of_default_settings_has_the_queues_own_defaults() -> None:
    """The settings take the job queue's defaults from it: a queue configured from
    settings left at their defaults is QueueConfig's default configuration."""
    default = QueueConfig(max_concurrent=4, max_per_member=2, cost=1)
    assert queue_config(load_settings(env())) == default


def test_each_queue_setting_reaches_its_own_field_of_the_queue() -> None:
    """Every variable the job queue is configured by lands in the field it names."""
    s = load_settings(
        env(
            MAX_CONCURRENT_JOBS="7",
            MAX_JOBS_PER_USER="3",
            UPSCALE_COST="5",
            MAX_INPUT_PIXELS="2000000",
            MAX_INPUT_SIDE="1000",
            JOB_LEASE_SECONDS="12",
            ONEMIN_BUSY_TIMEOUT="600",
            JOB_MAX_AGE="7200",
            ONEMIN_OUTAGE_REFUND_AFTER="900",
            JOB_RETENTION_DAYS="9",
        )
    )
    config = queue_config(s)
    assert (config.max_concurrent, config.max_per_member, config.cost) == (7, 3, 5)
    assert config.limits == ImageLimits(max_pixels=2_000_000, max_side=1000)
    assert (config.lease, config.busy_timeout, config.max_age) == (12.0, 600.0, 7200.0)
    assert (config.circuit_give_up, config.retention_days) == (900.0, 9)


def test_env_example_lists_every_variable() -> None:
    """.env.example shows every variable the settings read, and no other but its two."""
    assert set(env_example()) == {v.name for v in VARIABLES} | NOT_SETTINGS


@pytest.mark.parametrize("variable", VARIABLES, ids=lambda v: v.name)
def test_env_example_shows_each_default(variable: Variable) -> None:
    """The value .env.example shows reads as the dataclass's default (blank when that is
    none, or for a required secret)."""
    shown = env_example()[variable.name]
    if variable.required:
        assert shown == ""
    elif variable.name == "SPOOL_DIR":  # blank: a spool folder beside the database
        assert shown == ""
        s = load_settings(env())
        assert s.database_path is not None and s.spool_dir == s.database_path.parent / "spool"
    elif shown == "":
        assert variable.default in (None, frozenset())
    else:
        assert variable.parse(variable.name, shown, {}) == variable.default


def test_readme_documents_every_variable_of_env_example() -> None:
    """An owner reading only the README finds every variable, the two not in settings too."""
    assert sorted(set(env_example()) - set(readme_defaults())) == []


@pytest.mark.parametrize("variable", VARIABLES, ids=lambda v: v.name)
def test_readme_shows_each_default_as_env_example_does(variable: Variable) -> None:
    """The README's configuration tables give each variable .env.example's default."""
    cell = readme_defaults()[variable.name]
    shown = env_example()[variable.name]
    if variable.required:
        assert cell == "required"
    elif variable.name in IN_WORDS:
        assert cell and cell not in ("empty", f"`{shown}`")
    elif shown == "":
        assert cell == "empty"
    else:
        assert cell == f"`{shown}`"


@pytest.mark.parametrize("missing", ["DISCORD_TOKEN", "ONEMIN_API_KEY"])
def test_missing_secret_names_the_variable(missing: str) -> None:
    """A missing required variable raises an error naming it."""
    values = env()
    del values[missing]
    with pytest.raises(SettingsError) as info:
        load_settings(values)
    assert info.value.variable == missing


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("UPSCALE_COST", "0"),
        ("UPSCALE_COST", "one"),
        ("DEFAULT_USER_LIMIT", "-1"),
        ("LIMIT_PERIOD", "hourly"),
        ("MAX_CONCURRENT_JOBS", "0"),
        ("MAX_JOBS_PER_USER", "2.5"),
        ("DEV_GUILD_ID", "abc"),
        ("MODERATOR_ROLE_IDS", "123,x"),
        ("DATABASE_URL", "mysql://db/x"),
        ("DATABASE_URL", "postgresql://db/"),
        ("DATABASE_URL", "sqlite:///"),
        ("ONEMIN_API_BASE", "ftp://api.1min.ai"),
        ("ONEMIN_API_BASE", "http://example.com"),
        ("LOG_LEVEL", "LOUD"),
        ("ONEMIN_UPSCALE_TIMEOUT", "1"),
        ("ONEMIN_REQUESTS_PER_MINUTE", "0"),
        ("SHARD_COUNT", "0"),
        ("ALLOWED_GUILD_IDS", "1,two"),
        ("TOTAL_BUDGET", "-5"),
        ("TOTAL_BUDGET_PERIOD", "lifetime"),
        ("ALERT_CHANNEL_ID", "#general"),
        ("JOB_LEASE_SECONDS", "60"),
        ("STARTUP_RETRY_SECONDS", "soon"),
    ],
)
def test_malformed_value_names_the_variable(name: str, value: str) -> None:
    """Each malformed variable is rejected with an error naming that variable."""
    with pytest.raises(SettingsError) as info:
        load_settings(env(**{name: value}))
    assert info.value.variable == name
    assert name in str(info.value)


def test_parses_every_variable() -> None:
    """All variables set: each lands in its typed field."""
    s = load_settings(
        env(
            ONEMIN_API_BASE="http://127.0.0.1:8123/",
            DATABASE_URL="sqlite:////tmp/x/y.db",
            DEV_GUILD_ID="1234567890",
            UPSCALE_COST="3",
            DEFAULT_USER_LIMIT="0",
            LIMIT_PERIOD="Weekly",
            MAX_CONCURRENT_JOBS="8",
            MAX_JOBS_PER_USER="5",
            MODERATOR_ROLE_IDS="11, 22,,33",
            LOG_LEVEL="debug",
        )
    )
    assert s.onemin_api_base == "http://127.0.0.1:8123"
    assert s.api_base_is_loopback
    assert s.database_path == Path("/tmp/x/y.db")
    assert s.spool_dir == Path("/tmp/x/spool")
    assert s.dev_guild_id == 1234567890
    assert (s.upscale_cost, s.default_user_limit, s.limit_period) == (3, 0, "weekly")
    assert (s.max_concurrent_jobs, s.max_jobs_per_user) == (8, 5)
    assert s.moderator_role_ids == frozenset({11, 22, 33})
    assert s.log_level == "DEBUG"


def test_shard_ids_must_lie_within_the_shard_count() -> None:
    """SHARD_IDS outside 0..SHARD_COUNT-1, or without SHARD_COUNT, names SHARD_IDS."""
    for values in ({"SHARD_COUNT": "2", "SHARD_IDS": "0,2"}, {"SHARD_IDS": "0"}):
        with pytest.raises(SettingsError) as info:
            load_settings(env(**values))
        assert info.value.variable == "SHARD_IDS"


def test_parses_the_fleet_and_owner_variables() -> None:
    """PostgreSQL URL, shards, allowed guilds, total budget and alert channel land typed."""
    s = load_settings(
        env(
            DATABASE_URL="postgresql://bot:pw@127.0.0.1:5432/upscaler",
            SHARD_COUNT="4",
            SHARD_IDS="3,1",
            ONEMIN_REQUESTS_PER_MINUTE="90",
            ALLOWED_GUILD_IDS="111,222",
            TOTAL_BUDGET="500",
            TOTAL_BUDGET_PERIOD="weekly",
            ALERT_CHANNEL_ID="333",
        )
    )
    assert s.database_engine == "postgresql" and s.database_path is None
    assert "pw" not in repr(s)
    assert "pw" in s.secret_values()  # masked in every log line
    assert (s.shard_count, s.shard_ids) == (4, (1, 3))
    assert s.onemin_requests_per_minute == 90
    assert s.allowed_guild_ids == frozenset({111, 222})
    assert (s.total_budget, s.total_budget_period) == (500, "weekly")
    assert s.alert_channel_id == 333


def test_secrets_never_in_repr_or_errors() -> None:
    """Neither secret shows in the settings' repr/str nor in a later variable's error."""
    s = load_settings(env())
    assert TOKEN not in repr(s) and KEY not in repr(s) and TOKEN not in str(s)
    assert s.discord_token.get() == TOKEN
    assert repr(Secret("abc")) == "Secret('**********')"
    with pytest.raises(SettingsError) as info:
        load_settings(env(UPSCALE_COST="nope"))
    assert TOKEN not in str(info.value) and KEY not in str(info.value)


def test_importing_the_package_reads_no_environment(tmp_path: Path) -> None:
    """Importing every bot module with an empty environment works and reads nothing."""
    code = (
        "import bot.app.settings, bot.frontend.client, bot.frontend.tree, bot.logs, bot.app.cli,"
        " bot.app.services, cogs.upscale, cogs.credits"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(Path.cwd())},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr


def test_start_without_token_exits_2_with_one_line(tmp_path: Path) -> None:
    """`python -m bot` with no configuration prints one line naming DISCORD_TOKEN, exits 2."""
    result = subprocess.run(
        [sys.executable, "-m", "bot"],
        env={"PATH": os.environ.get("PATH", ""), "PYTHONPATH": str(Path.cwd())},
        cwd=tmp_path,  # no .env here
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "DISCORD_TOKEN" in lines[0]
