"""What the upscale commands say to members, in one place: which catalogue key says it.

Failures are keyed by :class:`bot.failures.FailureKind` and progress by
:class:`bot.jobs.Stage`, so a kind without a text is caught by a test (every kind maps to
a key that every language has), not shown as a generic message. Everything here returns
a :class:`bot.i18n.Text` (a key and its parameters); the caller renders it in the
member's language (``text.render(locale)``) or, for a channel post after the token
expired, in the server's (:meth:`bot.frontend.replies.Replies.post`).
"""

from __future__ import annotations

import time
from datetime import datetime

from bot.failures import FailureKind
from bot.i18n import ENGLISH, Text
from bot.jobs import JobFailure, LimitReached, Progress, Stage, WaitReason

STAGE_KEYS: dict[Stage, str] = {
    Stage.RECEIVING: "progress.stage.receiving",
    Stage.UPLOADING: "progress.stage.uploading",
    Stage.UPSCALING: "progress.stage.upscaling",
    Stage.DOWNLOADING: "progress.stage.downloading",
    Stage.DELIVERING: "progress.stage.delivering",
}

_UNUSABLE = "failure.bad_result"
FAILURE_KEYS: dict[FailureKind, str] = {
    FailureKind.UNAUTHORIZED: "failure.unauthorized",
    FailureKind.OUT_OF_CREDITS: "failure.out_of_credits",
    FailureKind.RATE_LIMITED: "failure.rate_limited",
    FailureKind.INPUT_REJECTED: "failure.input_rejected",
    FailureKind.UNAVAILABLE: "failure.unavailable",
    FailureKind.TIMEOUT: "failure.timeout",
    FailureKind.BAD_RESPONSE: _UNUSABLE,
    FailureKind.DOWNLOAD_REFUSED: _UNUSABLE,
    FailureKind.TOO_LARGE: _UNUSABLE,
    FailureKind.ERROR: "failure.generic",
    FailureKind.BAD_RESULT: _UNUSABLE,
    FailureKind.MISSING_PERMISSIONS: "failure.missing_permissions",
    FailureKind.DELIVERY_ERROR: "failure.delivery_error",
    FailureKind.INPUT_INVALID: "failure.input_invalid",
    FailureKind.SOURCE_GONE: "failure.source_gone",
    FailureKind.SOURCE_FAILED: "failure.source_failed",
    FailureKind.CIRCUIT_OPEN: "failure.circuit_open",
    FailureKind.INPUT_LOST: "failure.restart",
    FailureKind.EXPIRED: "failure.expired",
    FailureKind.SHUTDOWN: "failure.shutdown",
    FailureKind.CANCELLED: "failure.cancelled",
    FailureKind.BUG: "failure.generic",
}
RATE_LIMIT_MIN_WAIT = 5  # seconds: "try again" is never sooner than this
RATE_LIMIT_DEFAULT_WAIT = 30  # seconds, when the service did not say

RESUMED = Text.of("progress.resumed")
PAUSED = Text.of("progress.stopping")
CANCEL_TOO_LATE = Text.of("cancel.too_late")
CANCEL_NOT_ALLOWED = Text.of("cancel.not_allowed")
CANCEL_FINISHED = Text.of("cancel.already_finished")
DELETE_NOT_ALLOWED = Text.of("result.delete_not_allowed")
NOT_ON_DISCORD = Text.of("error.not_discord_hosted")
DOWNLOAD_FAILED = Text.of("error.download_failed")
SHUTDOWN = Text.of("failure.shutdown")
MISSING_PERMISSIONS = Text.of("failure.missing_permissions")
CIRCUIT_OPEN_REFUSAL = Text.of("service.circuit_open")


def timestamp(when: float | datetime) -> str:
    """A Discord relative timestamp (each member's client shows it in their language)."""
    seconds = when.timestamp() if isinstance(when, datetime) else when
    return f"<t:{int(seconds)}:R>"


def failure_reason(failure: JobFailure) -> Text:
    """Why the job failed, in plain words (without the refund)."""
    if failure.reason is not None:
        return failure.reason
    key = FAILURE_KEYS[failure.kind]
    if failure.kind is FailureKind.RATE_LIMITED:
        wait = max(RATE_LIMIT_MIN_WAIT, int(failure.retry_after or RATE_LIMIT_DEFAULT_WAIT))
        return Text.of(key, when=timestamp(time.time() + wait))
    return Text.of(key)


def failure_text(failure: JobFailure) -> Text:
    """The member's message for a failed job (always mentions the refund)."""
    return Text.of("failure.message", reason=failure_reason(failure))


def failure_message(failure: JobFailure, locale: str | None = ENGLISH) -> str:
    """:func:`failure_text` rendered in ``locale``."""
    return failure_text(failure).render(locale)


def cancelled_text(cost: int) -> Text:
    return Text.of("cancel.done", count=cost)


def limit_text(error: LimitReached) -> Text:
    """Which limit the member reached, how much of it is used, and when it resets."""
    denial = error.denial
    params: dict[str, object] = {"used": denial.used, "limit": denial.limit}
    if denial.reason == "total_budget":
        reset = (
            timestamp(denial.resets_at)
            if denial.resets_at is not None
            else Text.of("credits.resets_never")
        )
        return Text.of("limit.total_budget", reset=reset, **params)
    key = "limit.server" if denial.reason == "server_budget" else "limit.member"
    if denial.resets_at is not None:
        return Text.of(f"{key}_resets", reset=timestamp(denial.resets_at), **params)
    return Text.of(key, **params)


def queue_full_text(limit: int) -> Text:
    return Text.of("error.queue_full", count=limit)


def progress_text(progress: Progress, since: str) -> Text:
    """The progress line (``since``: when it was requested, as markup). A job that waits
    says why: its place in line, 1min.ai's rate limit, or the service refusing the bot's
    account (with when it will be refunded if that lasts)."""
    stage, position = progress.stage, progress.position
    if progress.wait is WaitReason.SERVICE_REFUSING:
        until = timestamp(progress.until or time.time())
        return Text.of("progress.waiting_refused", position=position or 1, until=until, since=since)
    if stage is Stage.QUEUED:
        if not position:
            return Text.of("progress.queued_next", since=since)
        return Text.of("progress.queued", position=position, since=since)
    if stage is Stage.WAITING:
        return Text.of("progress.waiting_service", position=position or 1, since=since)
    key = STAGE_KEYS.get(stage)
    what = Text.of(key) if key is not None else Text.verbatim(stage.value)
    return Text.of("progress.working", stage=what, since=since)


def note_lines(notes: list[Text] | tuple[Text, ...], locale: str | None) -> str:
    """Notes about what was done to an image, one ``ℹ️`` line each."""
    return "\n".join(Text.of("note.line", note=note).render(locale) for note in notes)
