"""Settings: read once from the environment (and ``.env``) into a frozen, validated object.

Nothing here runs at import time. ``load_settings()`` is called by ``python -m bot``;
tests build :class:`Settings` directly or pass their own mapping to ``load_settings``.
A missing or malformed variable raises :class:`SettingsError`, whose message is one line
naming the variable and what is expected; it never contains a secret's value.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from bot.dburl import POSTGRES_SCHEMES, SQLITE_PREFIX, Engine, engine_of, sqlite_path
from bot.timings import Timings

__all__ = [
    "OUTPUT_FORMATS",
    "PERIODS",
    "Period",
    "Secret",
    "Settings",
    "SettingsError",
    "is_loopback_url",
    "load_settings",
]

Period = Literal["daily", "weekly", "monthly", "lifetime"]
PERIODS: tuple[Period, ...] = ("daily", "weekly", "monthly", "lifetime")
BUDGET_PERIODS: tuple[Period, ...] = ("daily", "weekly", "monthly")  # TOTAL_BUDGET_PERIOD
OUTPUT_FORMATS: tuple[str, ...] = ("png", "jpeg", "webp")

DEFAULT_API_BASE = "https://api.1min.ai"
# Hosts that serve 1min.ai's presigned result URLs (docs/onemin-api.md, "Downloading").
DEFAULT_RESULT_HOSTS: tuple[str, ...] = (
    "s3.us-east-1.amazonaws.com",
    "asset.1min.ai.s3.us-east-1.amazonaws.com",
    "asset.1min.ai.s3.amazonaws.com",
)
# Origins the bot downloads members' images from: Discord's CDN and media proxies only.
DISCORD_MEDIA_ORIGINS: frozenset[str] = frozenset(
    {
        "https://cdn.discordapp.com",
        "https://media.discordapp.net",
        "https://images-ext-1.discordapp.net",
        "https://images-ext-2.discordapp.net",
    }
)
DEFAULT_DATABASE_URL = "sqlite:///data/upscaler.db"
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")
MAX_JOB_LEASE = 30.0  # seconds; a dead process's jobs are taken over after at most this


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
    upscale_timeout: float = 180.0  # seconds the synchronous IMAGE_UPSCALER call may take
    result_hosts: tuple[str, ...] = DEFAULT_RESULT_HOSTS
    spool_dir: Path = Path("data/spool")
    max_input_pixels: int = 1_048_576  # API pixel limit for the input (docs/onemin-api.md)
    max_input_side: int = 1536  # API per-side limit for the input, px
    shutdown_grace: float = 20.0  # seconds running jobs get to finish when the bot stops
    busy_timeout: float = 1800.0  # seconds a job may wait out 1min.ai's rate limit
    job_max_age: float = 86_400.0  # seconds after which an unfinished job is refunded
    job_lease: float = MAX_JOB_LEASE  # seconds a process holds a job without renewing
    circuit_probe_interval: float = 180.0  # seconds between probes while 1min.ai refuses
    circuit_give_up: float = 3600.0  # seconds queued jobs wait for 1min.ai to accept again
    job_retention_days: int = 30  # days a finished job's row is kept (ledger and audit stay)
    metrics_port: int | None = None  # serve /metrics, /healthz, /readyz here; None: off
    metrics_host: str = "127.0.0.1"  # the address the metrics port binds to
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


def is_loopback_url(url: str) -> bool:
    """True when ``url``'s host is localhost or a loopback address."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise SettingsError(name, "is required but not set (put it in .env or the environment)")
    return value


def _int(env: Mapping[str, str], name: str, default: int, lo: int, hi: int) -> int:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(name, f"expected a whole number from {lo} to {hi}") from None
    if not lo <= value <= hi:
        raise SettingsError(name, f"expected a whole number from {lo} to {hi}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, lo: float, hi: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(name, f"expected a number of seconds from {lo:g} to {hi:g}") from None
    if not lo <= value <= hi:
        raise SettingsError(name, f"expected a number of seconds from {lo:g} to {hi:g}")
    return value


def _snowflake(name: str, raw: str) -> int:
    if not raw.isdigit() or not 0 < int(raw) < 2**64:
        raise SettingsError(name, "expected a Discord id (digits only)")
    return int(raw)


def _http_url(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(name, "expected an http(s) URL such as https://api.1min.ai")
    if parts.scheme == "http" and not is_loopback_url(raw):
        raise SettingsError(name, "expected an https URL (plain http only for 127.0.0.1)")
    return raw.rstrip("/")


def _database_url(raw: str) -> str:
    name = "DATABASE_URL"
    expected = (
        "expected sqlite:///relative/path.db, sqlite:////absolute/path.db or"
        " postgresql://user[:password]@host[:port]/database"
    )
    if raw.startswith(SQLITE_PREFIX):
        if len(raw) == len(SQLITE_PREFIX):
            raise SettingsError(name, expected)
        return raw
    parts = urlsplit(raw)
    if f"{parts.scheme}://" not in POSTGRES_SCHEMES or not parts.hostname:
        raise SettingsError(name, expected)
    if not parts.path.strip("/"):
        raise SettingsError(name, expected)
    try:
        parts.port  # noqa: B018 - raises on a malformed port
    except ValueError:
        raise SettingsError(name, expected) from None
    return raw


def _id_set(env: Mapping[str, str], name: str) -> frozenset[int]:
    raw = env.get(name, "").strip()
    return frozenset(_snowflake(name, part.strip()) for part in raw.split(",") if part.strip())


def _period(
    env: Mapping[str, str], name: str, default: Period, allowed: tuple[Period, ...]
) -> Period:
    value = env.get(name, "").strip().lower() or default
    for period in allowed:
        if value == period:
            return period
    raise SettingsError(name, "expected one of " + ", ".join(allowed))


def _shards(env: Mapping[str, str]) -> tuple[int | None, tuple[int, ...] | None]:
    count_raw = env.get("SHARD_COUNT", "").strip()
    ids_raw = env.get("SHARD_IDS", "").strip()
    if not count_raw:
        if ids_raw:
            raise SettingsError("SHARD_IDS", "needs SHARD_COUNT (the fleet's total shards)")
        return None, None
    count = _int(env, "SHARD_COUNT", 1, 1, 10_000)
    if not ids_raw:
        return count, None
    ids: list[int] = []
    for part in ids_raw.split(","):
        part = part.strip()
        if not part:
            continue
        if not part.isdigit() or int(part) >= count:
            raise SettingsError("SHARD_IDS", f"expected shard numbers from 0 to {count - 1}")
        ids.append(int(part))
    if not ids or len(set(ids)) != len(ids):
        raise SettingsError("SHARD_IDS", "expected distinct shard numbers, comma-separated")
    return count, tuple(sorted(ids))


def load_settings(env: Mapping[str, str] | None = None, *, dotenv: bool = True) -> Settings:
    """Build :class:`Settings` from ``env`` (default: ``os.environ`` plus ``.env``).

    Raises :class:`SettingsError` naming the first bad variable.
    """
    if env is None:
        if dotenv:
            from dotenv import load_dotenv

            load_dotenv(override=False)
        env = os.environ

    token = _required(env, "DISCORD_TOKEN")
    api_key = _required(env, "ONEMIN_API_KEY")
    api_base = _http_url(
        "ONEMIN_API_BASE", env.get("ONEMIN_API_BASE", "").strip() or DEFAULT_API_BASE
    )

    database_url = _database_url(env.get("DATABASE_URL", "").strip() or DEFAULT_DATABASE_URL)

    dev_raw = env.get("DEV_GUILD_ID", "").strip()
    dev_guild_id = _snowflake("DEV_GUILD_ID", dev_raw) if dev_raw else None
    alert_raw = env.get("ALERT_CHANNEL_ID", "").strip()
    alert_channel_id = _snowflake("ALERT_CHANNEL_ID", alert_raw) if alert_raw else None

    log_level = env.get("LOG_LEVEL", "").strip().upper() or "INFO"
    if log_level not in LOG_LEVELS:
        raise SettingsError("LOG_LEVEL", "expected one of DEBUG, INFO, WARNING, ERROR, CRITICAL")

    hosts_raw = env.get("ONEMIN_RESULT_HOSTS", "").strip()
    result_hosts = (
        tuple(h.strip().lower() for h in hosts_raw.split(",") if h.strip())
        if hosts_raw
        else DEFAULT_RESULT_HOSTS
    )

    spool_raw = env.get("SPOOL_DIR", "").strip()
    if spool_raw:
        spool_dir = Path(spool_raw)
    elif database_url.startswith(SQLITE_PREFIX):
        spool_dir = sqlite_path(database_url).parent / "spool"
    else:
        spool_dir = Path("data/spool")
    shard_count, shard_ids = _shards(env)

    return Settings(
        discord_token=Secret(token),
        onemin_api_key=Secret(api_key),
        onemin_api_base=api_base,
        database_url=Secret(database_url),
        dev_guild_id=dev_guild_id,
        upscale_cost=_int(env, "UPSCALE_COST", 1, 1, 1_000_000),
        default_user_limit=_int(env, "DEFAULT_USER_LIMIT", 10, 0, 1_000_000),
        limit_period=_period(env, "LIMIT_PERIOD", "daily", PERIODS),
        max_concurrent_jobs=_int(env, "MAX_CONCURRENT_JOBS", 4, 1, 64),
        max_jobs_per_user=_int(env, "MAX_JOBS_PER_USER", 2, 1, 100),
        moderator_role_ids=_id_set(env, "MODERATOR_ROLE_IDS"),
        log_level=log_level,
        onemin_requests_per_minute=_int(env, "ONEMIN_REQUESTS_PER_MINUTE", 180, 2, 100_000),
        onemin_rate_window=_float(env, "ONEMIN_RATE_WINDOW", 60.0, 1.0, 3600.0),
        shard_count=shard_count,
        shard_ids=shard_ids,
        allowed_guild_ids=_id_set(env, "ALLOWED_GUILD_IDS"),
        total_budget=_int(env, "TOTAL_BUDGET", 0, 0, 1_000_000),
        total_budget_period=_period(env, "TOTAL_BUDGET_PERIOD", "monthly", BUDGET_PERIODS),
        alert_channel_id=alert_channel_id,
        upscale_timeout=_float(env, "ONEMIN_UPSCALE_TIMEOUT", 180.0, 5.0, 3600.0),
        result_hosts=result_hosts,
        spool_dir=spool_dir,
        max_input_pixels=_int(env, "MAX_INPUT_PIXELS", 1_048_576, 1024, 100_000_000),
        max_input_side=_int(env, "MAX_INPUT_SIDE", 1536, 32, 20_000),
        shutdown_grace=_float(env, "SHUTDOWN_GRACE", 20.0, 0.0, 600.0),
        busy_timeout=_float(env, "ONEMIN_BUSY_TIMEOUT", 1800.0, 10.0, 86_400.0),
        job_max_age=_float(env, "JOB_MAX_AGE", 86_400.0, 600.0, 30 * 86_400.0),
        job_lease=_float(env, "JOB_LEASE_SECONDS", MAX_JOB_LEASE, 3.0, MAX_JOB_LEASE),
        circuit_probe_interval=_float(env, "ONEMIN_PROBE_INTERVAL", 180.0, 5.0, 3600.0),
        circuit_give_up=_float(env, "ONEMIN_OUTAGE_REFUND_AFTER", 3600.0, 60.0, 7 * 86_400.0),
        job_retention_days=_int(env, "JOB_RETENTION_DAYS", 30, 1, 3650),
        metrics_port=_int(env, "METRICS_PORT", 0, 1, 65_535) or None,
        metrics_host=env.get("METRICS_HOST", "").strip() or "127.0.0.1",
    )
