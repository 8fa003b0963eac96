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
OUTPUT_FORMATS: tuple[str, ...] = ("png", "jpeg", "webp")

DEFAULT_API_BASE = "https://api.1min.ai"
# Hosts that serve 1min.ai's presigned result URLs (ONEMIN_API.md section 6).
DEFAULT_RESULT_HOSTS: tuple[str, ...] = (
    "s3.us-east-1.amazonaws.com",
    "asset.1min.ai.s3.us-east-1.amazonaws.com",
    "asset.1min.ai.s3.amazonaws.com",
)
LOG_LEVELS = ("CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG")


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
    database_path: Path = Path("data/upscaler.db")
    dev_guild_id: int | None = None
    upscale_cost: int = 1
    default_user_limit: int = 10
    limit_period: Period = "daily"
    max_concurrent_jobs: int = 4
    max_jobs_per_user: int = 2
    moderator_role_ids: frozenset[int] = field(default_factory=frozenset)
    log_level: str = "INFO"
    # Advanced knobs (documented in .env.example; the defaults suit nearly everyone).
    upscale_timeout: float = 180.0  # seconds the synchronous IMAGE_UPSCALER call may take
    result_hosts: tuple[str, ...] = DEFAULT_RESULT_HOSTS
    spool_dir: Path = Path("data/spool")
    max_input_pixels: int = 1_048_576  # API pixel limit for the input (ONEMIN_API.md s.5)
    max_input_side: int = 1536  # API per-side limit for the input, px
    shutdown_grace: float = 20.0  # seconds running jobs get to finish when the bot stops
    # Test hooks: where discord.py connects (None = the real Discord).
    discord_api_base: str | None = None
    discord_gateway_url: str | None = None

    @property
    def api_base_is_loopback(self) -> bool:
        return is_loopback_url(self.onemin_api_base)


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


def _database_path(raw: str) -> Path:
    name = "DATABASE_URL"
    prefix = "sqlite:///"
    if not raw.startswith(prefix) or len(raw) == len(prefix):
        raise SettingsError(
            name, "expected sqlite:///relative/path.db or sqlite:////absolute/path.db"
        )
    # sqlite:///data/x.db -> data/x.db ; sqlite:////abs/x.db -> /abs/x.db
    return Path(raw[len(prefix) :])


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

    db_raw = env.get("DATABASE_URL", "").strip() or "sqlite:///data/upscaler.db"
    database_path = _database_path(db_raw)

    dev_raw = env.get("DEV_GUILD_ID", "").strip()
    dev_guild_id = _snowflake("DEV_GUILD_ID", dev_raw) if dev_raw else None

    period = env.get("LIMIT_PERIOD", "").strip().lower() or "daily"
    if period not in PERIODS:
        raise SettingsError("LIMIT_PERIOD", "expected one of daily, weekly, monthly, lifetime")

    roles_raw = env.get("MODERATOR_ROLE_IDS", "").strip()
    roles = frozenset(
        _snowflake("MODERATOR_ROLE_IDS", part.strip())
        for part in roles_raw.split(",")
        if part.strip()
    )

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
    spool_dir = Path(spool_raw) if spool_raw else database_path.parent / "spool"

    return Settings(
        discord_token=Secret(token),
        onemin_api_key=Secret(api_key),
        onemin_api_base=api_base,
        database_path=database_path,
        dev_guild_id=dev_guild_id,
        upscale_cost=_int(env, "UPSCALE_COST", 1, 1, 1_000_000),
        default_user_limit=_int(env, "DEFAULT_USER_LIMIT", 10, 0, 1_000_000),
        limit_period=period,  # type: ignore[arg-type]
        max_concurrent_jobs=_int(env, "MAX_CONCURRENT_JOBS", 4, 1, 64),
        max_jobs_per_user=_int(env, "MAX_JOBS_PER_USER", 2, 1, 100),
        moderator_role_ids=roles,
        log_level=log_level,
        upscale_timeout=_float(env, "ONEMIN_UPSCALE_TIMEOUT", 180.0, 5.0, 3600.0),
        result_hosts=result_hosts,
        spool_dir=spool_dir,
        max_input_pixels=_int(env, "MAX_INPUT_PIXELS", 1_048_576, 1024, 100_000_000),
        max_input_side=_int(env, "MAX_INPUT_SIDE", 1536, 32, 20_000),
        shutdown_grace=_float(env, "SHUTDOWN_GRACE", 20.0, 0.0, 600.0),
    )
