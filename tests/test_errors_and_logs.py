"""The error handler's choice of message, failure texts, and the secret-masking log filter."""

from __future__ import annotations

import logging
import sqlite3
import sys
from types import SimpleNamespace
from typing import Any

import asyncpg
import discord
import pytest
from discord import app_commands

from bot.failures import FailureKind
from bot.frontend.client import UpscaleBot
from bot.frontend.tree import GENERIC_FAILURE, UserError, describe_error
from bot.i18n import SUPPORTED, catalogue
from bot.jobs import JobFailure
from bot.logs import MASK, RedactSecrets
from cogs.messages import FAILURE_KEYS, failure_message

SECRET = "s3cret-token-value"


def test_every_failure_kind_has_a_text() -> None:
    """No FailureKind falls back to a generic message: each maps to a catalogue key that
    every language has."""
    assert set(FAILURE_KEYS) == set(FailureKind)
    for kind, key in FAILURE_KEYS.items():
        for language in SUPPORTED:
            assert catalogue().entry(language, key), (kind, language)


@pytest.mark.parametrize("language", SUPPORTED)
def test_failure_messages_are_written_in_the_members_language(language: str) -> None:
    """A failure reads in the member's language: not the English words elsewhere."""
    text = failure_message(JobFailure(FailureKind.TIMEOUT), language)
    assert text.startswith("❌ ")
    assert ("took too long" in text) == (language == "en-US")


@pytest.mark.parametrize("kind", list(FailureKind))
def test_failure_message_always_mentions_the_refund(kind: FailureKind) -> None:
    """Whatever the kind, the member hears that their credits came back."""
    assert "refunded" in failure_message(JobFailure(kind))


def test_rate_limited_message_says_when_to_try_again() -> None:
    """A busy service's message carries a relative Discord timestamp."""
    text = failure_message(JobFailure(FailureKind.RATE_LIMITED, retry_after=60))
    assert "<t:" in text and ":R>" in text


def test_user_error_is_shown_as_written_and_expected() -> None:
    """A UserError's own words reach the member, with no traceback logged."""
    assert describe_error(UserError(lambda _language: "Nope, not that.")) == (
        "Nope, not that.",
        True,
    )


def test_user_error_wrapped_by_discord_py_is_unwrapped() -> None:
    """A UserError raised inside a command (wrapped in CommandInvokeError) keeps its words."""

    class Wrapped(app_commands.AppCommandError):
        original = UserError(lambda _language: "Inner words.")

    assert describe_error(Wrapped()) == ("Inner words.", True)


def test_user_error_is_rendered_in_the_members_language() -> None:
    """A UserError carrying a catalogue key reads in the language it is described in."""
    error = UserError("error.queue_full", count=2)
    assert "already have 2 upscales" in describe_error(error)[0]
    assert describe_error(error, "de")[0] != describe_error(error)[0]
    assert str(error) == describe_error(error)[0]


def test_dm_refusal_is_explained() -> None:
    """A guild-only command used in a DM says where it works."""
    message, expected = describe_error(app_commands.NoPrivateMessage())
    assert "server" in message and expected


def test_failed_check_says_permission() -> None:
    """A failed check tells the member they lack permission."""
    message, expected = describe_error(app_commands.CheckFailure())
    assert "permission" in message and expected


def test_missing_bot_permissions_are_named() -> None:
    """The bot's missing permissions are listed in plain words."""
    error = app_commands.BotMissingPermissions(["attach_files", "embed_links"])
    message, expected = describe_error(error)
    assert "Attach Files" in message and "Embed Links" in message and expected


def test_cooldown_says_when_to_try_again() -> None:
    """A command on cooldown says how many seconds to wait."""
    cooldown = app_commands.Cooldown(1, 30.0)
    message, expected = describe_error(app_commands.CommandOnCooldown(cooldown, 12.0))
    assert "12 s" in message and expected


async def _upscale(interaction: discord.Interaction) -> None:
    """Unused: the command a CommandInvokeError names."""


def _invoke_error(exc: Exception) -> app_commands.CommandInvokeError:
    command: app_commands.Command[Any, ..., None] = app_commands.Command(
        name="upscale", description="Upscale", callback=_upscale
    )
    return app_commands.CommandInvokeError(command, exc)


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connect call failed"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        sqlite3.OperationalError("database is locked"),
        TimeoutError(),
    ],
    ids=["refused", "admin_shutdown", "cannot_connect_now", "sqlite_locked", "timeout"],
)
def test_a_database_outage_says_so_and_that_nothing_was_charged(error: Exception) -> None:
    """A command that met a database which does not answer tells the member so, and that
    nothing was charged: an expected state, not "something went wrong"."""
    text, expected = describe_error(_invoke_error(error))
    assert text == (
        "The bot can't reach its database right now. Nothing was charged. Try again in a minute."
    )
    assert expected


@pytest.mark.parametrize("language", SUPPORTED)
def test_the_database_outage_is_said_in_the_members_language(language: str) -> None:
    """Every catalogue language has its own words for the outage."""
    text, _ = describe_error(_invoke_error(ConnectionResetError()), language)
    assert ("Nothing was charged" in text) == (language == "en-US")


def test_a_full_disk_is_said_in_words_too() -> None:
    """Disk full is not transient, but the member still hears what happened."""
    text, expected = describe_error(
        _invoke_error(sqlite3.OperationalError("database or disk is full"))
    )
    assert "out of disk space" in text and "Nothing was charged" in text
    assert expected


def test_unexpected_error_gets_the_generic_text_and_is_logged() -> None:
    """Anything else shows the generic message and is marked unexpected (traceback logged)."""
    error = app_commands.AppCommandError(f"boom with {SECRET}")
    message, expected = describe_error(error)
    assert message == GENERIC_FAILURE and not expected
    assert SECRET not in message


def _record(msg: str, *args: object, exc: BaseException | None = None) -> logging.LogRecord:
    exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
    return logging.LogRecord("t", logging.INFO, __file__, 1, msg, args, exc_info)


def test_filter_masks_a_secret_in_the_message_and_its_arguments() -> None:
    """A secret in the format string or an argument is replaced by the mask."""
    record = _record("token=%s and " + SECRET, SECRET)
    RedactSecrets([SECRET]).filter(record)
    assert record.getMessage() == f"token={MASK} and {MASK}"


def test_filter_masks_a_secret_in_an_exception() -> None:
    """A secret inside a logged exception's text is masked in the formatted traceback."""
    try:
        raise RuntimeError(f"failed with {SECRET}")
    except RuntimeError as exc:
        record = _record("oops", exc=exc)
        assert sys.exc_info()[1] is exc
    RedactSecrets([SECRET]).filter(record)
    assert record.exc_text is not None and SECRET not in record.exc_text
    assert MASK in record.exc_text


def test_filter_ignores_too_short_values_and_leaves_clean_records_alone() -> None:
    """Values under 4 characters are not treated as secrets; clean records are untouched."""
    record = _record("abc %s", "value")
    RedactSecrets(["abc"]).filter(record)
    assert record.getMessage() == "abc value" and record.args == ("value",)


def test_servers_outside_allowed_guild_ids_are_one_line_at_start(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A bot in 10,000 servers, 10 of them allowed: one warning with the count and the
    first few ids, not one line per server."""
    allowed = frozenset(range(10))
    bot = SimpleNamespace(
        settings=SimpleNamespace(allowed_guild_ids=allowed),
        guilds=[SimpleNamespace(id=i) for i in range(10_000)],
    )
    with caplog.at_level(logging.WARNING, "bot.frontend.client"):
        UpscaleBot._warn_about_servers_not_allowed(bot)  # type: ignore[arg-type]  # duck-typed bot
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1
    assert lines[0].startswith(
        "The bot is in 9990 servers that ALLOWED_GUILD_IDS does not list"
        " (10, 11, 12, 13, 14 and 9985 more)"
    )
