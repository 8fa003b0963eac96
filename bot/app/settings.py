"""Settings: read once from the environment (and ``.env``) into a frozen, validated object.

Nothing here runs at import time. ``load_settings()`` is called by ``python -m bot``;
tests build :class:`Settings` directly or pass their own mapping to ``load_settings``.
Each default is written once: in the :class:`Settings` dataclass, or, for a value a part
of the bot owns, in that part (the 1min.ai client's, the job queue's), which the
dataclass names. :data:`VARIABLES` says which variable sets which field and how its text
is read.
A missing or malformed variable raises :class:`SettingsError`, whose message is one line
naming the variable and what is expected; it never contains a secret's value.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from bot.db.urls import POSTGRES_SCHEMES, SQLITE_PREFIX, Engine, engine_of, sqlite_path
from bot.jobs import config as jobs
from bot.ledger.periods import PERIODS, Period
from bot.onemin.client import (
    DEFAULT_API_BASE,
    DEFAULT_RESULT_HOSTS,
    DEFAULT_UPSCALE_TIMEOUT,
    is_loopback_url,
)
from bot.timings import Timings

__all__ = [
    "VARIABLES",
    "Secret",
    "Settings",
    "SettingsError",
    "Variable",
    "load_settings",
]

BUDGET_PERIODS: tuple[Period, ...] = ("daily", "weekly", "monthly")  # TOTAL_BUDGET_PERIOD
DEFAULT_DATABASE_URL = "sqlite:///data/upscaler.db"
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
MAX_JOB_LEASE = jobs.LEASE  # seconds; a dead process's jobs are taken over after at most this


class SettingsError(ValueError):
    """A configuration variable is missing or malformed."""

    def __init__(self, variable: str, expected: str) -> None:
        self.variable = variable
        self.expected = expected
        super().__init__(f"{variable}: {expected}")


class Secret:
    """A string that never shows itself in ``repr``/``str``; call :meth:`get` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def get(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __bool__(self) -> bool:
        return bool(self._value)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the bot is configured with. Immutable; secrets are :class:`Secret`."""

    discord_token: Secret
    onemin_api_key: Secret
    onemin_api_base: str = DEFAULT_API_BASE
    # The ledger and job store: sqlite:///path or postgresql://... (may hold a password).
    database_url: Secret = field(default_factory=lambda: Secret(DEFAULT_DATABASE_URL))
    dev_guild_id: int | None = None
    upscale_cost: int = 1
    default_user_limit: int = 10
    limit_period: Period = "daily"
    max_concurrent_jobs: int = 4  # fleet-wide on PostgreSQL
    max_jobs_per_user: int = 2
    moderator_role_ids: frozenset[int] = field(default_factory=frozenset)
    log_level: str = "INFO"
    onemin_requests_per_minute: int = 180  # fleet-wide on PostgreSQL
    onemin_rate_window: float = 60.0  # advanced: seconds the request limit counts over
    shard_count: int | None = None
    shard_ids: tuple[int, ...] | None = None  # None: this process runs every shard
    allowed_guild_ids: frozenset[int] = field(default_factory=frozenset)  # empty: any
    total_budget: int = 0  # credits all servers together may spend per period; 0 = no cap
    total_budget_period: Period = "monthly"
    alert_channel_id: int | None = None  # None: DM the application owner
    # Advanced knobs (documented in .env.example; the defaults suit nearly everyone).
    upscale_timeout: float = DEFAULT_UPSCALE_TIMEOUT  # seconds the upscale call may take
    result_hosts: tuple[str, ...] = DEFAULT_RESULT_HOSTS
    spool_dir: Path = Path("data/spool")  # unless SPOOL_DIR: beside a SQLite database
    max_input_pixels: int = 1_048_576  # API pixel limit for the input (docs/onemin-api.md)
    max_input_side: int = 1536  # API per-side limit for the input, px
    shutdown_grace: float = 20.0  # seconds running jobs get to finish when the bot stops
    busy_timeout: float = jobs.BUSY_TIMEOUT  # seconds a job may wait out 1min.ai's 429s
    job_max_age: float = jobs.MAX_AGE  # seconds after which an unfinished job is refunded
    job_lease: float = jobs.LEASE  # seconds a process holds a job without renewing
    circuit_probe_interval: float = 180.0  # seconds between probes while 1min.ai refuses
    circuit_give_up: float = jobs.CIRCUIT_GIVE_UP  # seconds queued jobs wait for 1min.ai
    job_retention_days: int = jobs.RETENTION_DAYS  # days a finished job's row is kept
    metrics_port: int | None = None  # serve /metrics, /healthz, /readyz here; None: off
    metrics_host: str = "127.0.0.1"  # the address the metrics port binds to
    startup_retry: float = 60.0  # seconds start-up retries the network in all; 0: one try
    # The bot's own waits; no variable sets them (tests shorten them: see bot.timings).
    timings: Timings = field(default_factory=Timings)

    @property
    def api_base_is_loopback(self) -> bool:
        return is_loopback_url(self.onemin_api_base)

    def secret_values(self) -> tuple[str, ...]:
        """Every secret string the bot holds, for the log filter: the token, the API key,
        and the database password (with the whole URL) when there is one."""
        values = [self.discord_token.get(), self.onemin_api_key.get()]
        url = self.database_url.get()
        password = urlsplit(url).password if not url.startswith("sqlite:") else None
        if password:
            values += [password, url]
        return tuple(values)

    @property
    def database_engine(self) -> Engine:
        return engine_of(self.database_url.get())

    @property
    def database_path(self) -> Path | None:
        """The SQLite file, or None on PostgreSQL."""
        url = self.database_url.get()
        return sqlite_path(url) if url.startswith("sqlite:") else None


# -- reading the environment -----------------------------------------------------------
#
# Each variable is a row of VARIABLES: its name, the Settings field it sets, and how its
# text is read. A variable that is unset or blank leaves the field's default, so every
# default is written once, in the dataclass above. Rows are read in order and the first
# bad one stops loading (a later row may depend on an earlier one: SHARD_IDS).

Parse = Callable[[str, str, Mapping[str, object]], object]
"""``parse(variable, text, read)``: the field's value from the variable's stripped,
non-empty ``text``, or :class:`SettingsError`; ``read`` holds the fields read before it."""


@dataclass(frozen=True, slots=True)
class Variable:
    """One environment variable: the :class:`Settings` field it sets and how it is read."""

    name: str
    field: str
    parse: Parse

    @property
    def required(self) -> bool:
        """True when the field has no default: the variable must be set."""
        spec = _FIELDS[self.field]
        return spec.default is MISSING and spec.default_factory is MISSING

    @property
    def default(self) -> object:
        """The field's default (from the dataclass, the one place it is written)."""
        spec = _FIELDS[self.field]
        if spec.default_factory is not MISSING:
            return spec.default_factory()
        if spec.default is MISSING:
            raise LookupError(f"{self.name} is required: it has no default")
        return spec.default


_FIELDS: dict[str, Field[object]] = {spec.name: spec for spec in fields(Settings)}


def _whole(lo: int, hi: int) -> Parse:
    """A whole number from ``lo`` to ``hi``."""

    def parse(name: str, raw: str, read: Mapping[str, object]) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise SettingsError(name, f"expected a whole number from {lo} to {hi}") from None
        if not lo <= value <= hi:
            raise SettingsError(name, f"expected a whole number from {lo} to {hi}, got {value}")
        return value

    return parse


def _seconds(lo: float, hi: float) -> Parse:
    """A number of seconds from ``lo`` to ``hi``."""
    expected = f"expected a number of seconds from {lo:g} to {hi:g}"

    def parse(name: str, raw: str, read: Mapping[str, object]) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise SettingsError(name, expected) from None
        if not lo <= value <= hi:
            raise SettingsError(name, expected)
        return value

    return parse


def _period(allowed: tuple[Period, ...]) -> Parse:
    """One of ``allowed``, in any case."""

    def parse(name: str, raw: str, read: Mapping[str, object]) -> Period:
        value = raw.lower()
        for known in allowed:
            if value == known:
                return known
        raise SettingsError(name, "expected one of " + ", ".join(allowed))

    return parse


def _text(name: str, raw: str, read: Mapping[str, object]) -> str:
    return raw


def _secret(name: str, raw: str, read: Mapping[str, object]) -> Secret:
    return Secret(raw)


def _snowflake(name: str, raw: str, read: Mapping[str, object]) -> int:
    if not raw.isdigit() or not 0 < int(raw) < 2**64:
        raise SettingsError(name, "expected a Discord id (digits only)")
    return int(raw)


def _id_set(name: str, raw: str, read: Mapping[str, object]) -> frozenset[int]:
    parts = (part.strip() for part in raw.split(","))
    return frozenset(_snowflake(name, part, read) for part in parts if part)


def _http_url(name: str, raw: str, read: Mapping[str, object]) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(name, "expected an http(s) URL such as https://api.1min.ai")
    if parts.scheme == "http" and not is_loopback_url(raw):
        raise SettingsError(name, "expected an https URL (plain http only for 127.0.0.1)")
    return raw.rstrip("/")


def _database_url(name: str, raw: str, read: Mapping[str, object]) -> Secret:
    expected = (
        "expected sqlite:///relative/path.db, sqlite:////absolute/path.db or"
        " postgresql://user[:password]@host[:port]/database"
    )
    if raw.startswith(SQLITE_PREFIX):
        if len(raw) == len(SQLITE_PREFIX):
            raise SettingsError(name, expected)
        return Secret(raw)
    parts = urlsplit(raw)
    if f"{parts.scheme}://" not in POSTGRES_SCHEMES or not parts.hostname:
        raise SettingsError(name, expected)
    if not parts.path.strip("/"):
        raise SettingsError(name, expected)
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise SettingsError(name, expected) from None
    return Secret(raw)


def _log_level(name: str, raw: str, read: Mapping[str, object]) -> str:
    level = raw.upper()
    if level not in LOG_LEVELS:
        raise SettingsError(name, "expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL")
    return level


def _hosts(name: str, raw: str, read: Mapping[str, object]) -> tuple[str, ...]:
    return tuple(h.strip().lower() for h in raw.split(",") if h.strip())


def _path(name: str, raw: str, read: Mapping[str, object]) -> Path:
    return Path(raw)


def _shard_ids(name: str, raw: str, read: Mapping[str, object]) -> tuple[int, ...]:
    count = read.get("shard_count")
    if not isinstance(count, int):
        raise SettingsError(name, "needs SHARD_COUNT (the fleet's total shards)")
    ids: list[int] = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) >= count:
            raise SettingsError(name, f"expected shard numbers from 0 to {count - 1}")
        ids.append(int(part))
    if not ids or len(set(ids)) != len(ids):
        raise SettingsError(name, "expected distinct shard numbers, comma-separated")
    return tuple(sorted(ids))


VARIABLES: tuple[Variable, ...] = (
    Variable("DISCORD_TOKEN", "discord_token", _secret),
    Variable("ONEMIN_API_KEY", "onemin_api_key", _secret),
    Variable("ONEMIN_API_BASE", "onemin_api_base", _http_url),
    Variable("DATABASE_URL", "database_url", _database_url),
    Variable("DEV_GUILD_ID", "dev_guild_id", _snowflake),
    Variable("ALERT_CHANNEL_ID", "alert_channel_id", _snowflake),
    Variable("LOG_LEVEL", "log_level", _log_level),
    Variable("ONEMIN_RESULT_HOSTS", "result_hosts", _hosts),
    Variable("SPOOL_DIR", "spool_dir", _path),  # unset: beside a SQLite database
    Variable("SHARD_COUNT", "shard_count", _whole(1, 10_000)),
    Variable("SHARD_IDS", "shard_ids", _shard_ids),
    Variable("UPSCALE_COST", "upscale_cost", _whole(1, 1_000_000)),
    Variable("DEFAULT_USER_LIMIT", "default_user_limit", _whole(0, 1_000_000)),
    Variable("LIMIT_PERIOD", "limit_period", _period(PERIODS)),
    Variable("MAX_CONCURRENT_JOBS", "max_concurrent_jobs", _whole(1, 64)),
    Variable("MAX_JOBS_PER_USER", "max_jobs_per_user", _whole(1, 100)),
    Variable("MODERATOR_ROLE_IDS", "moderator_role_ids", _id_set),
    Variable("ONEMIN_REQUESTS_PER_MINUTE", "onemin_requests_per_minute", _whole(2, 100_000)),
    Variable("ONEMIN_RATE_WINDOW", "onemin_rate_window", _seconds(1.0, 3600.0)),
    Variable("ALLOWED_GUILD_IDS", "allowed_guild_ids", _id_set),
    Variable("TOTAL_BUDGET", "total_budget", _whole(0, 1_000_000)),
    Variable("TOTAL_BUDGET_PERIOD", "total_budget_period", _period(BUDGET_PERIODS)),
    Variable("ONEMIN_UPSCALE_TIMEOUT", "upscale_timeout", _seconds(5.0, 3600.0)),
    Variable("MAX_INPUT_PIXELS", "max_input_pixels", _whole(1024, 100_000_000)),
    Variable("MAX_INPUT_SIDE", "max_input_side", _whole(32, 20_000)),
    Variable("SHUTDOWN_GRACE", "shutdown_grace", _seconds(0.0, 600.0)),
    Variable("ONEMIN_BUSY_TIMEOUT", "busy_timeout", _seconds(10.0, 86_400.0)),
    Variable("JOB_MAX_AGE", "job_max_age", _seconds(600.0, 30 * 86_400.0)),
    Variable("JOB_LEASE_SECONDS", "job_lease", _seconds(3.0, MAX_JOB_LEASE)),
    Variable("ONEMIN_PROBE_INTERVAL", "circuit_probe_interval", _seconds(5.0, 3600.0)),
    Variable("ONEMIN_OUTAGE_REFUND_AFTER", "circuit_give_up", _seconds(60.0, 7 * 86_400.0)),
    Variable("JOB_RETENTION_DAYS", "job_retention_days", _whole(1, 3650)),
    Variable("METRICS_PORT", "metrics_port", _whole(1, 65_535)),
    Variable("METRICS_HOST", "metrics_host", _text),
    Variable("STARTUP_RETRY_SECONDS", "startup_retry", _seconds(0.0, 3600.0)),
)
"""Every variable :func:`load_settings` reads, in the order it reads them."""


def load_settings(env: Mapping[str, str] | None = None, *, dotenv: bool = True) -> Settings:
    """Build :class:`Settings` from ``env`` (default: ``os.environ`` plus ``.env``).

    Each of :data:`VARIABLES` that is set is read into its field; the others keep the
    field's default. Raises :class:`SettingsError` naming the first bad variable.
    """
    if env is None:
        if dotenv:
            from dotenv import load_dotenv

            load_dotenv(override=False)
        env = os.environ

    read: dict[str, Any] = {}
    for variable in VARIABLES:
        raw = env.get(variable.name, "").strip()
        if raw:
            read[variable.field] = variable.parse(variable.name, raw, read)
        elif variable.required:
            raise SettingsError(
                variable.name, "is required but not set (put it in .env or the environment)"
            )
    settings = Settings(**read)
    if "spool_dir" not in read and settings.database_path is not None:
        # The spool's default is beside a SQLite database (the field's on PostgreSQL).
        return replace(settings, spool_dir=settings.database_path.parent / "spool")
    return settings
