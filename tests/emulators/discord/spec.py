"""What Discord's OpenAPI spec allows in the JSON bodies the bot sends, and the check.

The field lists below are the request-body schemas of Discord's public OpenAPI spec,
repository ``discord/discord-api-spec``, file ``specs/openapi.json`` at commit
:data:`SPEC_COMMIT` (``info.version`` "10"), read on the routes the bot uses:

* ``create_message``, ``POST /channels/{id}/messages``: ``MessageCreateRequest``;
* ``update_message``, ``PATCH /channels/{id}/messages/{id}``: ``MessageEditRequestPartial``;
* ``execute_webhook``, ``POST /webhooks/{id}/{token}`` (follow-ups): any of
  ``IncomingWebhookRequestPartial`` and ``IncomingWebhookUpdateRequestPartial``;
* ``update_original_webhook_message`` and ``update_webhook_message``, ``PATCH
  /webhooks/{id}/{token}/messages/{@original,id}``: ``IncomingWebhookUpdateRequestPartial``;
* ``create_interaction_response``, ``POST /interactions/{id}/{token}/callback``:
  ``{type, data}``, ``data`` being ``IncomingWebhookInteractionRequest`` for types 4 and 5
  (``CreateMessageInteractionCallbackRequest``) and
  ``IncomingWebhookUpdateForInteractionCallbackRequestPartial`` for types 6 and 7
  (``UpdateMessageInteractionCallbackRequest``).

Only top-level fields are checked, and the types of a few (``nonce``: an int64 or a string
of at most 25 characters; ``enforce_nonce``, ``tts``: booleans; ``content``: a string;
``flags``: an integer; null allowed everywhere, as the spec allows). Discord ignores a JSON
field it does not know and refuses a wrong type with 400 code 50035 "Invalid Form Body";
the emulator does the same, and records both in ``spec_violations`` so the test fails
(:meth:`~tests.emulators.discord.rest.Rest.check_spec`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

SPEC_REPOSITORY = "discord/discord-api-spec"
SPEC_FILE = "specs/openapi.json"
SPEC_COMMIT = "00194a6b622a3cb89e74c32fe92415904c748144"
SPEC_VERSION = "10"

_MESSAGE_BODY = frozenset({"content", "embeds", "allowed_mentions", "components", "attachments"})

ROUTE_FIELDS: dict[str, frozenset[str]] = {
    # MessageCreateRequest
    "create message": _MESSAGE_BODY
    | {"sticker_ids", "flags", "poll", "message_reference", "nonce", "enforce_nonce", "tts"},
    # MessageEditRequestPartial
    "edit message": _MESSAGE_BODY | {"flags", "sticker_ids"},
    # IncomingWebhookRequestPartial (any of it and IncomingWebhookUpdateRequestPartial)
    "execute webhook": _MESSAGE_BODY
    | {"poll", "tts", "flags", "username", "avatar_url", "thread_name", "applied_tags"},
    # IncomingWebhookUpdateRequestPartial
    "edit webhook message": _MESSAGE_BODY | {"poll", "flags"},
    # The callback itself, then its data by callback type
    "interaction callback": frozenset({"type", "data"}),
    # IncomingWebhookInteractionRequest
    "callback data 4/5": _MESSAGE_BODY | {"poll", "tts", "flags"},
    # IncomingWebhookUpdateForInteractionCallbackRequestPartial
    "callback data 6/7": _MESSAGE_BODY | {"flags"},
}

# discord.py 2.7 puts "tts": false in every message body it builds, edits included
# (discord/http.py handle_message_parameters, discord/webhook/async_.py
# interaction_message_response_params), where the spec has no "tts". Discord ignores it, and
# the bot cannot leave it out: tolerated on these routes, and only with the value false.
TOLERATED: dict[str, frozenset[str]] = {
    "edit message": frozenset({"tts"}),
    "edit webhook message": frozenset({"tts"}),
    "callback data 6/7": frozenset({"tts"}),
}

INT64 = (-(2**63), 2**63 - 1)
NONCE_MAX_CHARS = 25


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _nonce_ok(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, int) and not isinstance(value, bool):
        return INT64[0] <= value <= INT64[1]
    return isinstance(value, str) and len(value) <= NONCE_MAX_CHARS


FIELD_TYPES: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "nonce": ("an integer (int64) or a string of at most 25 characters", _nonce_ok),
    "enforce_nonce": ("a boolean", lambda v: v is None or isinstance(v, bool)),
    "tts": ("a boolean", lambda v: v is None or isinstance(v, bool)),
    "content": ("a string", lambda v: v is None or isinstance(v, str)),
    "flags": ("an integer", lambda v: v is None or _is_int(v)),
}


def check_body(route: str, body: Any) -> tuple[list[str], list[str]]:
    """``(unknown fields, wrong types)`` in ``body`` sent on ``route`` (a key of
    :data:`ROUTE_FIELDS`), each a sentence naming the field; both empty when it conforms."""
    if body is None:
        return [], []
    if not isinstance(body, dict):
        return [], [f"{route}: the body is {type(body).__name__}, not a JSON object"]
    allowed = ROUTE_FIELDS[route]
    tolerated = TOLERATED.get(route, frozenset())
    unknown = [
        f"{route}: field {name!r} is not in the spec"
        for name, value in body.items()
        if name not in allowed and not (name in tolerated and (value is False or value is None))
    ]
    wrong = [
        f"{route}: field {name!r} must be {FIELD_TYPES[name][0]}, got {body[name]!r}"
        for name in body
        if name in FIELD_TYPES and name in allowed and not FIELD_TYPES[name][1](body[name])
    ]
    return unknown, wrong


def callback_data_route(kind: Any) -> str | None:
    """The schema a callback's ``data`` follows for callback type ``kind``, if checked."""
    if kind in (4, 5):
        return "callback data 4/5"
    if kind in (6, 7):
        return "callback data 6/7"
    return None
