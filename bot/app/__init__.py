"""The process: settings, services, start-up, checks, the metrics endpoint, the CLI.

Nothing in the bot imports this package but the process itself: the front end reads
the settings and services through the protocols it declares
(:class:`bot.frontend.client.BotSettings`, :class:`~bot.frontend.client.BotServices`),
and the core is handed what it needs. What is public here (``__all__``) is what an owner
embedding the bot builds: the settings and the services. The command line
(:func:`bot.app.cli.run`, ``python -m bot``) is imported from its module (as
``bot/__main__.py`` does); what only the tests use is imported from its module.
"""

from __future__ import annotations

from bot.app.services import Services
from bot.app.settings import Settings

__all__ = ["Services", "Settings"]
