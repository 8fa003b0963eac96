"""What the bot's gateway connections report to the process: one :class:`ShardStatus` a
shard (:meth:`bot.frontend.client.UpscaleBot.gateway_status`).

The metrics and ``/readyz`` (:mod:`bot.app.metrics`, :mod:`bot.app.metrics_http`) read
it; this module imports nothing, so they can name it without importing discord.py.
"""

from __future__ import annotations

from typing import NamedTuple


class ShardStatus(NamedTuple):
    """One gateway shard of this process, as the bot sees it."""

    connected: bool
    latency: float  # seconds between a heartbeat and its ack (inf or nan: not known yet)
