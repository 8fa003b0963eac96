"""Every version of every message: the Discord emulator with an edit history.

:class:`RecordingDiscordEmulator` is :class:`~tests.emulators.discord.DiscordEmulator`
that also keeps, per message id, each version the bot made of it (posted, or edited
through any route: a channel edit, a webhook edit of ``@original``, an update callback),
with the time it was made. The plain emulator keeps only a message's latest version (and
:attr:`Injected.edits` those of one interaction's reply); a soak that asks "was a posted
result ever replaced?" needs the whole history of every message::

    async with RecordingDiscordEmulator() as discord_emu:
        ...
        for message_id, versions in discord_emu.versions.items():
            first = versions[0].message

It records in the two places every message goes through (``_new_message`` and
``_apply_edit``), so it needs no change to the routes themselves.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from tests.emulators.discord.emulator import DiscordEmulator
from tests.emulators.discord.world import Channel

__all__ = ["MessageVersion", "RecordingDiscordEmulator"]


@dataclass(frozen=True, slots=True)
class MessageVersion:
    """One version of a message, as Discord stored it (without the uploaded bytes)."""

    at: float  # time.monotonic() when it was made
    message: dict[str, Any]


class RecordingDiscordEmulator(DiscordEmulator):
    """The emulator, keeping every version of every message (see the module docstring)."""

    def __init__(self, *, token: str = "emulated-bot-token") -> None:
        super().__init__(token=token)
        self.versions: dict[int, list[MessageVersion]] = {}

    def _record(self, message: dict[str, Any]) -> None:
        kept = {k: v for k, v in message.items() if k != "_files"}
        self.versions.setdefault(int(message["id"]), []).append(
            MessageVersion(time.monotonic(), kept)
        )

    def _new_message(
        self,
        channel: Channel,
        data: dict[str, Any],
        files: list[tuple[str, bytes]],
        interaction: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        message = super()._new_message(channel, data, files, interaction)
        self._record(message)
        return message

    def _apply_edit(
        self, message: dict[str, Any], body: dict[str, Any], files: list[tuple[str, bytes]]
    ) -> dict[str, Any]:
        updated = super()._apply_edit(message, body, files)
        self._record(updated)
        return updated
