"""The process: settings, services, start-up, checks, the metrics endpoint, the CLI.

What the front end uses of the process is here (``__all__``): the settings, the
services it is handed, and the shards' status it reports to the metrics. The command
line (:func:`bot.app.cli.run`, ``python -m bot``) is not imported here: it builds the
Discord client, which imports these settings, so it is imported from its module (as
``bot/__main__.py`` does). What only the tests use is imported from its module.
"""

from __future__ import annotations

from bot.app.metrics import ShardStatus
from bot.app.services import Services
from bot.app.settings import DISCORD_MEDIA_ORIGINS, Settings

__all__ = ["DISCORD_MEDIA_ORIGINS", "Services", "Settings", "ShardStatus"]
