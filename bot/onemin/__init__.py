"""The 1min.ai adapter: the HTTP client, the fleet-wide rate window, the circuit breaker.

* :mod:`bot.onemin.client`: :class:`OneMinClient` (upload, upscale, download), with
  :mod:`bot.onemin.api`, :mod:`bot.onemin.downloads`, :mod:`bot.onemin.http` under it
  and its errors in :mod:`bot.onemin.errors`;
* :mod:`bot.onemin.pacing`: :class:`RateGate`, the requests per minute across the fleet;
* :mod:`bot.onemin.circuit`: :class:`Circuit`, 1min.ai refusing the account.

What the rest of the bot uses is here (``__all__``), with every error the client's
methods document (a caller may catch any of them) and the values they return; what
only the tests use is imported from its module.
"""

from __future__ import annotations

from bot.onemin.circuit import Circuit, CircuitEvent, CircuitState
from bot.onemin.client import (
    DEFAULT_API_BASE,
    DEFAULT_RESULT_HOSTS,
    DEFAULT_UPSCALE_TIMEOUT,
    OUTPUT_FORMATS,
    ROUTE_ASSETS,
    ROUTE_DOWNLOAD,
    ROUTE_FEATURES,
    ROUTE_RESULTS,
    BadResponse,
    DownloadRefused,
    InputRejected,
    OneMinClient,
    OneMinError,
    OutOfCredits,
    RateLimited,
    ResponseTooLarge,
    ServiceUnavailable,
    TimedOut,
    Unauthorized,
    UpscaleResult,
    is_loopback_url,
)
from bot.onemin.pacing import WINDOW_MARGIN, RateGate, waiting_hook

__all__ = [
    "DEFAULT_API_BASE",
    "DEFAULT_RESULT_HOSTS",
    "DEFAULT_UPSCALE_TIMEOUT",
    "OUTPUT_FORMATS",
    "ROUTE_ASSETS",
    "ROUTE_DOWNLOAD",
    "ROUTE_FEATURES",
    "ROUTE_RESULTS",
    "WINDOW_MARGIN",
    "BadResponse",
    "Circuit",
    "CircuitEvent",
    "CircuitState",
    "DownloadRefused",
    "InputRejected",
    "OneMinClient",
    "OneMinError",
    "OutOfCredits",
    "RateGate",
    "RateLimited",
    "ResponseTooLarge",
    "ServiceUnavailable",
    "TimedOut",
    "Unauthorized",
    "UpscaleResult",
    "is_loopback_url",
    "waiting_hook",
]
