"""Discord's side of :mod:`bot.i18n`: localised command descriptions and the member's locale.

Convention for command, option and choice texts: mark each with the catalogue key in
``locale_str``'s extras. :func:`cmd_text` builds one from the key alone (the English text
comes from ``en-US.toml``)::

    @app_commands.command(name="upscale", description=cmd_text("cmd.upscale.description"))
    @app_commands.describe(image=cmd_text("cmd.upscale.option.image"))

    # equivalent, with the English written out:
    locale_str("Upscale an image 4× with AI", key="cmd.upscale.description")

and install the translator once, before syncing: ``await tree.set_translator(Translator())``.
Strings without a ``key`` extra stay English. Names (commands, groups, options) are never
translated: they are part of the product.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

import discord
from discord import app_commands

from bot.i18n import ENGLISH, catalogue, english, resolve

if TYPE_CHECKING:
    from bot.frontend.client import Interaction

log = logging.getLogger(__name__)

MAX_DESCRIPTION = 100  # characters, Discord's limit for descriptions and choice names

# Places whose text is a name: they stay English whatever the locale.
_NAME_LOCATIONS = frozenset(
    {
        app_commands.TranslationContextLocation.command_name,
        app_commands.TranslationContextLocation.group_name,
        app_commands.TranslationContextLocation.parameter_name,
    }
)


def cmd_text(key: str) -> app_commands.locale_str:
    """A ``locale_str`` carrying the English text of ``key`` and the key for the translator."""
    return app_commands.locale_str(english(key), key=key)


def localised_choices(prefix: str, values: Iterable[str]) -> list[app_commands.Choice[str]]:
    """Choices named by the catalogue keys ``<prefix>.<value>`` (e.g. ``period.daily``).

    ``Literal[...]`` parameters get untranslatable choice names; use
    ``@app_commands.choices(period=localised_choices("period", PERIODS))`` instead.
    """
    return [
        app_commands.Choice(name=cmd_text(f"{prefix}.{value}"), value=value) for value in values
    ]


def interaction_locale(interaction: Interaction) -> str:
    """The catalogue language for the member who triggered ``interaction``."""
    return resolve(interaction.locale.value)


def guild_locale(guild: discord.Guild | None) -> str:
    """The catalogue language for a server's channel posts (its community language)."""
    return resolve(guild.preferred_locale.value) if guild is not None else ENGLISH


class Translator(app_commands.Translator):
    """Localises descriptions and choice names marked with ``key=`` from the catalogue.

    Returns None (Discord then shows the English text) for names, for strings without a
    key, for English and unsupported locales, and for a key a language lacks.
    """

    async def translate(
        self,
        string: app_commands.locale_str,
        locale: discord.Locale,
        context: app_commands.TranslationContextTypes,
    ) -> str | None:
        return translate_key(string.extras.get("key"), locale.value, context.location)


def translate_key(
    key: object, locale: str, location: app_commands.TranslationContextLocation | None = None
) -> str | None:
    """The synchronous core of :meth:`Translator.translate` (easy to test)."""
    if not isinstance(key, str) or location in _NAME_LOCATIONS:
        return None
    lang = resolve(locale)
    if lang == ENGLISH:
        return None
    try:
        text = catalogue().template(lang, key)
    except KeyError:
        log.warning("No %s text for command key %s; Discord will show English", lang, key)
        return None
    if not 1 <= len(text) <= MAX_DESCRIPTION:
        log.warning("The %s text for %s is not 1-%d characters", lang, key, MAX_DESCRIPTION)
        return None
    return text
