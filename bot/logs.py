"""Logging set-up with a last line of defence: secret values are masked in every record."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

MASK = "[redacted]"
LOG_FORMAT = "%(asctime)s %(levelname)-8s %(name)s: %(message)s"


class RedactSecrets(logging.Filter):
    """Replaces any of the given secret strings in a record's final text with a mask."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self._secrets = tuple(s for s in secrets if len(s) >= 4)

    def _clean(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        cleaned = self._clean(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self._clean(record.exc_text)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure_logging(level: str, secrets: Iterable[str] = ()) -> None:
    """Log to stderr at ``level``, masking ``secrets`` in every line from every logger."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # discord.py's HTTP layer logs request bodies at DEBUG; keep it at INFO at most.
    logging.getLogger("discord.http").setLevel(max(logging.INFO, root.level))
