"""What the upscale commands say to members, in one place.

The texts are keyed by :class:`bot.failures.FailureKind` and by :class:`bot.jobs.Stage`,
so a kind without a text is caught by a test, not shown as a generic message.
"""

from __future__ import annotations

import time

from bot.failures import FailureKind
from bot.jobs import JobFailure, LimitReached, Stage

STAGE_TEXT = {
    Stage.UPLOADING: "Uploading your image to the upscaler",
    Stage.UPSCALING: "Upscaling 4×",
    Stage.DOWNLOADING: "Fetching the result",
    Stage.DELIVERING: "Posting the result",
}

REFUNDED = "Your credits were refunded."
_UNUSABLE = "The upscaling service sent back an unusable result. Try again later."
FAILURE_TEXT: dict[FailureKind, str] = {
    FailureKind.UNAUTHORIZED: "The upscaling service refused the bot's API key. "
    "Please ask a moderator to tell the bot owner.",
    FailureKind.OUT_OF_CREDITS: "The upscaling service is out of credits. "
    "Please ask a moderator to let the bot owner know.",
    FailureKind.RATE_LIMITED: "The upscaling service is busy right now.",
    FailureKind.INPUT_REJECTED: "The upscaling service could not process this image. "
    "Try a different image.",
    FailureKind.UNAVAILABLE: "The upscaling service is down right now. Try again in a few minutes.",
    FailureKind.TIMEOUT: "The upscale took too long and was stopped. Try again later.",
    FailureKind.BAD_RESPONSE: _UNUSABLE,
    FailureKind.DOWNLOAD_REFUSED: _UNUSABLE,
    FailureKind.TOO_LARGE: _UNUSABLE,
    FailureKind.ERROR: "The upscaling service failed. Try again later.",
    FailureKind.BAD_RESULT: _UNUSABLE,
    FailureKind.MISSING_PERMISSIONS: "I can't post the result here: I need the "
    "**Attach Files** and **Embed Links** permissions in this channel.",
    FailureKind.DELIVERY_ERROR: "I couldn't post the result in this channel. Try again later.",
    FailureKind.CIRCUIT_OPEN: "The upscaling service is refusing the bot's account right "
    "now, so no upscale can run. The bot owner has been told.",
    FailureKind.INPUT_LOST: "The bot restarted and could not finish your upscale. "
    "Please try again.",
    FailureKind.EXPIRED: "The bot was offline too long to finish your upscale. Please try again.",
    FailureKind.SHUTDOWN: "The bot is restarting, so your upscale was stopped. "
    "Please try again shortly.",
    FailureKind.CANCELLED: "Cancelled.",
    FailureKind.BUG: "The upscale failed. Try again later.",
}

CIRCUIT_OPEN_REFUSAL = f"{FAILURE_TEXT[FailureKind.CIRCUIT_OPEN]} Nothing was charged."
RESUMED = "🔄 The bot restarted; your upscale continues."
PAUSED = "⏸️ The bot is restarting; your upscale will continue when it is back."
CANCELLED = f"🚫 Cancelled. {REFUNDED}"
CANCEL_TOO_LATE = "Too late to cancel: the image is already being upscaled."
CANCEL_NOT_ALLOWED = "Only the member who asked for this upscale, or a moderator, can cancel it."
CANCEL_FINISHED = "This upscale has already finished."
DELETE_NOT_ALLOWED = "Only the member who asked for this upscale, or a moderator, can delete it."
NOT_ON_DISCORD = "I can only upscale images hosted on Discord."
DOWNLOAD_FAILED = "I couldn't download that image from Discord. Please try again."


def failure_message(failure: JobFailure) -> str:
    """The member's message for a failed job (always mentions the refund)."""
    text = FAILURE_TEXT[failure.kind]
    if failure.kind is FailureKind.RATE_LIMITED:
        wait = max(5, int(failure.retry_after or 30))
        text += f" Try again <t:{int(time.time()) + wait}:R>."
    return f"{text} {REFUNDED}"


def too_large_message(max_bytes: int) -> str:
    return f"That file is too large: the upscaler takes images up to {max_bytes // 1_000_000} MB."


def limit_message(error: LimitReached) -> str:
    denial = error.denial
    resets = (
        f" It resets <t:{int(denial.resets_at.timestamp())}:R>."
        if denial.resets_at is not None
        else ""
    )
    if denial.reason == "total_budget":
        return (
            f"The bot's total upscale budget is used up ({denial.used}/{denial.limit} credits"
            f" this period).{resets}"
        )
    who = "this server's upscale budget" if denial.reason == "server_budget" else "your limit"
    return f"You've reached {who} ({denial.used}/{denial.limit} credits used this period).{resets}"


def queue_full_message(limit: int) -> str:
    jobs = "upscale" if limit == 1 else "upscales"
    return (
        f"You already have {limit} {jobs} queued or running. "
        "Wait for one to finish, then try again."
    )


def progress_text(stage: Stage, position: int | None, since: str) -> str:
    """The progress line for a stage (``since``: when it was requested, as markup)."""
    if stage is Stage.QUEUED:
        place = f"#{position}" if position else "next"
        return f"⏳ Queued: you're {place} in line (requested {since})."
    if stage is Stage.WAITING:
        place = f"#{position}" if position else "next"
        return f"⏳ Waiting for the upscaling service: you're {place} in line (requested {since})."
    return f"⚙️ {STAGE_TEXT.get(stage, stage.value)}… (requested {since})"
