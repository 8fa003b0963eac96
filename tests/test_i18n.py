"""The message catalogues and the i18n API: completeness, placeholders, plurals, fallbacks."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import discord
import pytest
from discord import app_commands

from bot import i18n
from bot.frontend.translator import (
    MAX_DESCRIPTION,
    Translator,
    cmd_text,
    localised_choices,
    translate_key,
)
from bot.i18n import (
    ENGLISH,
    SUPPORTED,
    Catalogue,
    CatalogueError,
    catalogue,
    number,
    plural_category,
    resolve,
    t,
)

TRANSLATIONS = tuple(lang for lang in SUPPORTED if lang != ENGLISH)

# Keys whose text may equal the English one: units, pure layout, and words that are the
# same in that language (French "Source", German "Format").
SAME_AS_ENGLISH_ANYWHERE = frozenset(
    {
        "note.line",
        "usage.row",
        "quota.show.line",
        "unit.seconds",
        "unit.kb",
        "unit.mb",
        "unit.kib",
        "unit.mib",
    }
)
SAME_AS_ENGLISH: frozenset[tuple[str, str]] = frozenset(
    {
        ("de", "embed.field.format"),
        ("de", "usage.field.credits"),
        ("fr", "button.source"),
        ("fr", "embed.field.format"),
    }
)

# Every text a member may see that the current code shows (and the new features need).
EXPECTED_KEYS = (
    "error.generic",
    "error.not_in_dms",
    "error.not_a_moderator",
    "error.queue_full",
    "failure.message",
    "failure.rate_limited",
    "progress.queued",
    "progress.waiting_service",
    "progress.resumed",
    "progress.stopping",
    "button.cancel",
    "button.delete",
    "button.compare",
    "button.full_size",
    "button.source",
    "cancel.done",
    "cancel.too_late",
    "cancel.not_allowed",
    "cancel.already_finished",
    "compare.caption",
    "compare.label_before",
    "compare.label_after",
    "compare.expired",
    "batch.taken",
    "batch.skipped_not_image",
    "batch.no_images",
    "limit.total_budget",
    "guild.not_allowed",
    "service.circuit_open",
    "restart.notice",
    "restart.refunded_stale",
    "quota.show.total_budget",
    "quota.show.total_budget_value",
    "quota.show.service_state.name",
    "quota.show.service_state.ok",
    "quota.show.service_state.open",
    "quota.log.changed",
    "quota.log.budget_80",
    "quota.log.budget_100",
    "quota.log.set",
    "quota.log.cleared",
    "unit.credits",
    "image.not_image",
    "note.scaled_down_megapixels",
    "fit.scaled",
    "embed.field.size",
    "usage.title",
)


@pytest.fixture(autouse=True)
def strict() -> Iterator[None]:
    """Catalogue mistakes raise in these tests instead of falling back to English."""
    i18n.set_strict(True)
    yield
    i18n.set_strict(False)


def all_keys() -> list[str]:
    return sorted(catalogue().keys())


def cmd_keys() -> list[str]:
    return [key for key in all_keys() if key.startswith(("cmd.", "period."))]


def forms(lang: str, key: str) -> dict[str, str]:
    entry = catalogue().entry(lang, key)
    return {"": entry} if isinstance(entry, str) else entry


def dummy_params(key: str) -> dict[str, object]:
    params: dict[str, object] = {name: f"<{name}>" for name in catalogue().placeholders(key)}
    params["count"] = 3
    return params


# -- catalogue completeness --------------------------------------------------------------


def test_every_language_is_loaded() -> None:
    """The catalogue holds exactly the supported languages."""
    assert set(catalogue().languages) == set(SUPPORTED)


def test_expected_keys_exist() -> None:
    """The keys the cogs are switched to exist in the English catalogue."""
    missing = [key for key in EXPECTED_KEYS if key not in catalogue()]
    assert missing == []


@pytest.mark.parametrize("lang", TRANSLATIONS)
def test_same_keys_as_english(lang: str) -> None:
    """Each translation has every English key and no others."""
    english, translated = set(catalogue().keys()), set(catalogue().keys(lang))
    assert sorted(english - translated) == []
    assert sorted(translated - english) == []


@pytest.mark.parametrize("lang", TRANSLATIONS)
def test_placeholders_match_english(lang: str) -> None:
    """Every form of a translation uses exactly the English placeholders."""
    problems = []
    for key in all_keys():
        expected = catalogue().placeholders(key)
        for category, text in forms(lang, key).items():
            found = i18n.template_placeholders(text)
            if found != expected:
                problems.append((key, category, sorted(found ^ expected)))
    assert problems == []


def test_english_plural_forms_share_placeholders() -> None:
    """English one/other forms use the same placeholders (they are the reference)."""
    for key in all_keys():
        english = forms(ENGLISH, key)
        sets = {i18n.template_placeholders(text) for text in english.values()}
        assert len(sets) == 1, key


@pytest.mark.parametrize("lang", SUPPORTED)
def test_plural_tables_have_the_language_categories(lang: str) -> None:
    """Plural keys stay plural, with the CLDR categories the language needs and no others."""
    for key in all_keys():
        english_plural = catalogue().is_plural(key)
        assert catalogue().is_plural(key, lang) == english_plural, key
        if english_plural:
            categories = set(forms(lang, key))
            assert i18n.REQUIRED_CATEGORIES[lang] <= categories, key
            assert categories <= i18n.ALLOWED_CATEGORIES[lang], key


@pytest.mark.parametrize("lang", TRANSLATIONS)
def test_translations_differ_from_english(lang: str) -> None:
    """No text is left in English, apart from a small allow-list of units and names."""
    untranslated = [
        key
        for key in all_keys()
        if key not in SAME_AS_ENGLISH_ANYWHERE
        and (lang, key) not in SAME_AS_ENGLISH
        and set(forms(lang, key).values()) & set(forms(ENGLISH, key).values())
    ]
    assert untranslated == []


@pytest.mark.parametrize("lang", SUPPORTED)
def test_markdown_and_emoji_survive(lang: str) -> None:
    """Bold markers and leading emoji of the English text are kept in every translation."""
    for key in all_keys():
        english = forms(ENGLISH, key)
        reference = english["other"] if "other" in english else english[""]
        for text in forms(lang, key).values():
            assert text.count("**") == reference.count("**"), (lang, key)
            emoji = re.match(r"^[^\w\s{<*]+", reference)
            if emoji:
                assert text.startswith(emoji.group()), (lang, key)


@pytest.mark.parametrize("lang", SUPPORTED)
def test_every_key_formats_with_dummy_params(lang: str) -> None:
    """Formatting never fails for any key, in any language, with every placeholder given."""
    for key in all_keys():
        for count in (0, 1, 2, 1_000_000):
            text = t(lang, key, **{**dummy_params(key), "count": count})
            assert text and "{" not in text, (lang, key)


# -- command descriptions ----------------------------------------------------------------


@pytest.mark.parametrize("lang", SUPPORTED)
def test_command_texts_fit_discord_limits(lang: str) -> None:
    """Every command, option and choice text is 1-100 characters with no placeholders."""
    for key in cmd_keys():
        text = catalogue().entry(lang, key)
        assert isinstance(text, str), key
        assert 1 <= len(text) <= MAX_DESCRIPTION, (lang, key, len(text))
        assert not catalogue().placeholders(key, lang), key


def test_every_command_has_a_description() -> None:
    """Each slash command and subcommand of the product has a description key."""
    commands = [
        "upscale",
        "credits",
        "usage",
        "quota",
        *(
            f"quota.{sub}"
            for sub in (
                "show",
                "default",
                "role",
                "user",
                "clear",
                "clear_role",
                "server",
                "period",
                "grant",
                "reset",
                "log",
            )
        ),
    ]
    missing = [c for c in commands if f"cmd.{c}.description" not in catalogue()]
    assert missing == []


@app_commands.command(name="upscale", description=cmd_text("cmd.upscale.description"))
async def upscale_command(interaction: discord.Interaction) -> None:
    """Unused: the translator tests' command, whose description is translated."""


def description_context() -> app_commands.TranslationContextTypes:
    """Where the translator is asked for :func:`upscale_command`'s description."""
    return app_commands.TranslationContext(
        app_commands.TranslationContextLocation.command_description, upscale_command
    )


def test_translator_returns_german_description() -> None:
    """The Translator gives the German text for a description marked with its key."""
    text = cmd_text("cmd.upscale.description")
    context = description_context()
    result = asyncio.run(Translator().translate(text, discord.Locale.german, context))
    assert result == catalogue().entry("de", "cmd.upscale.description")
    assert str(text) == "Upscale an image 4× with AI"


@pytest.mark.parametrize(
    "locale",
    [discord.Locale.korean, discord.Locale.american_english, discord.Locale.british_english],
)
def test_translator_returns_none_for_english_and_unsupported(locale: discord.Locale) -> None:
    """English and unsupported locales get None, so Discord shows the English text."""
    context = description_context()
    result = asyncio.run(
        Translator().translate(cmd_text("cmd.upscale.description"), locale, context)
    )
    assert result is None


def test_translator_maps_latin_american_spanish() -> None:
    """es-419 gets the Spanish description."""
    assert translate_key("cmd.credits.description", "es-419") == catalogue().entry(
        "es-ES", "cmd.credits.description"
    )


def test_translator_leaves_names_and_unmarked_strings_alone() -> None:
    """Command names and strings without a key are never translated."""
    name = app_commands.TranslationContextLocation.command_name
    assert translate_key("cmd.upscale.description", "de", name) is None
    assert translate_key(None, "de") is None
    assert translate_key("no.such.key", "de") is None


# -- t(), plurals, numbers, fallbacks ------------------------------------------------------


def test_plural_selection_english() -> None:
    """1 credit, 2 credits, 0 credits."""
    assert t("en-US", "unit.credits", count=1) == "1 credit"
    assert t("en-US", "unit.credits", count=2) == "2 credits"
    assert t("en-US", "unit.credits", count=0) == "0 credits"


def test_french_zero_is_singular() -> None:
    """French (and Brazilian Portuguese) use the singular for 0."""
    assert t("fr", "unit.credits", count=0) == "0 crédit"
    assert t("fr", "cancel.done", count=0) == "Annulé. 0 crédit remboursé."
    assert t("pt-BR", "unit.credits", count=0) == "0 crédito"
    assert t("de", "unit.credits", count=0) == "0 Credits"
    assert t("es-ES", "unit.credits", count=0) == "0 créditos"


def test_japanese_has_one_form() -> None:
    """Japanese uses its single form for every count."""
    assert t("ja", "unit.credits", count=1) == "1クレジット"
    assert t("ja", "unit.credits", count=5) == "5クレジット"


@pytest.mark.parametrize(
    ("lang", "count", "category"),
    [
        ("en-US", 1, "one"),
        ("en-US", 0, "other"),
        ("de", 1, "one"),
        ("fr", 0, "one"),
        ("fr", 1, "one"),
        ("fr", 2, "other"),
        ("fr", 1_000_000, "many"),
        ("pt-BR", 0, "one"),
        ("es-ES", 0, "other"),
        ("es-ES", -1, "one"),
        ("ja", 1, "other"),
    ],
)
def test_plural_category(lang: str, count: int, category: str) -> None:
    """CLDR plural categories for whole numbers."""
    assert plural_category(lang, count) == category


def test_many_falls_back_to_other() -> None:
    """A language without a "many" form uses "other" for a million."""
    assert t("fr", "unit.credits", count=1_000_000) == "1\u202f000\u202f000 crédits"


@pytest.mark.parametrize(
    ("lang", "n", "expected"),
    [
        ("en-US", 1000, "1,000"),
        ("de", 1000, "1.000"),
        ("fr", 1000, "1\u202f000"),
        ("es-ES", 1000, "1000"),
        ("es-ES", 10000, "10.000"),
        ("pt-BR", 1000, "1.000"),
        ("ja", 1000, "1,000"),
        ("en-US", 1234567, "1,234,567"),
        ("de", -2500, "-2.500"),
        ("de", 2.5, "2,5"),
        ("en-US", 3.0, "3"),
        ("fr", 12.25, "12,25"),
        ("en-US", 999, "999"),
    ],
)
def test_number(lang: str, n: float, expected: str) -> None:
    """Thousands and decimal separators per language."""
    assert number(lang, n) == expected


def test_number_with_fixed_decimals() -> None:
    """``decimals`` keeps trailing zeros (elapsed times)."""
    assert number("de", 12.0, 1) == "12,0"
    assert number("en-US", 1234.56, 1) == "1,234.6"


def test_numbers_in_placeholders_are_localised() -> None:
    """int parameters are written with the language's separators."""
    assert t("de", "quota.invalid.limit", max=1_000_000) == (
        "Limits müssen zwischen 0 und 1.000.000 Credits liegen."
    )


@pytest.mark.parametrize("locale", ["ko", None, "", "xx-YY", "en-US"])
def test_fallback_to_english(locale: str | None) -> None:
    """Unsupported and missing locales read the English catalogue."""
    assert resolve(locale) == ENGLISH
    assert t(locale, "button.cancel") == "Cancel"


@pytest.mark.parametrize(
    ("locale", "expected"),
    [("en-GB", "en-US"), ("es-419", "es-ES"), ("de", "de"), ("pt-BR", "pt-BR"), ("pt_br", "pt-BR")],
)
def test_locale_mapping(locale: str, expected: str) -> None:
    """en-GB reads English, es-419 reads Spanish."""
    assert resolve(locale) == expected


def test_interaction_locale_values_resolve() -> None:
    """discord.Locale values map onto the catalogue languages."""
    assert resolve(discord.Locale.german.value) == "de"
    assert resolve(discord.Locale.latin_american_spanish.value) == "es-ES"
    assert resolve(discord.Locale.japanese.value) == "ja"
    assert resolve(discord.Locale.korean.value) == ENGLISH


def test_english_text_is_unchanged() -> None:
    """The English catalogue keeps today's wording."""
    assert t(None, "error.not_a_moderator") == (
        "Only moderators (Manage Server, or a moderator role) can do that."
    )
    assert t(None, "failure.message", reason=t(None, "failure.timeout")) == (
        "❌ The upscale took too long and was stopped. Try again later. Your credits were refunded."
    )
    assert t(None, "progress.queued", position=2, since="<t:1:R>") == (
        "⏳ Queued: you're #2 in line (requested <t:1:R>)."
    )


def test_unknown_key_raises_in_strict_mode() -> None:
    """Tests see a typo in a key as a KeyError."""
    with pytest.raises(KeyError):
        t("de", "no.such.key")


def test_missing_parameter_raises_in_strict_mode() -> None:
    """Tests see a forgotten parameter as a KeyError."""
    with pytest.raises(KeyError):
        t("de", "batch.skipped_not_image")


def test_runtime_falls_back_instead_of_crashing() -> None:
    """Outside strict mode, a bad key or missing parameter never raises."""
    i18n.set_strict(False)
    assert t("de", "no.such.key") == "no.such.key"
    assert t("de", "batch.skipped_not_image") == "{filename} is not an image, so I skipped it."


def test_runtime_falls_back_to_english_for_a_broken_translation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A translation missing a key is replaced by the English text at run time."""
    broken = Catalogue.from_toml(
        {"en-US": 'a = "Hello {name}"\nb = "Bye"', "de": 'a = "Hallo {nme}"'}
    )
    i18n.set_strict(False)
    monkeypatch.setattr(i18n, "catalogue", lambda: broken)
    assert t("de", "a", name="Ana") == "Hello Ana"
    assert t("de", "b") == "Bye"


def test_catalogue_rejects_format_specs_and_mixed_tables() -> None:
    """Placeholders are plain names; a plural table holds only plural forms."""
    with pytest.raises(CatalogueError):
        Catalogue.from_toml({"en-US": 'a = "{n:>3}"'})
    with pytest.raises(CatalogueError):
        Catalogue.from_toml({"en-US": 'a = { one = "x", other = "y", title = "z" }'})
    with pytest.raises(CatalogueError):
        Catalogue.from_toml({"en-US": 'a = "unbalanced {"'})


def test_catalogue_is_cached() -> None:
    """The files are read once."""
    assert catalogue() is catalogue()


def test_sync_payload_carries_localisations() -> None:
    """discord.py's sync payload gets German descriptions and choice names via the Translator."""

    @app_commands.command(name="usage", description=cmd_text("cmd.usage.description"))
    @app_commands.describe(period=cmd_text("cmd.usage.option.period"))
    @app_commands.choices(
        period=localised_choices("period", ("daily", "weekly", "monthly", "lifetime"))
    )
    async def usage(
        interaction: discord.Interaction, period: app_commands.Choice[str] | None = None
    ) -> None:
        """Unused."""

    async def payload() -> dict[str, Any]:
        client = discord.Client(intents=discord.Intents.none())
        tree = app_commands.CommandTree(client)
        return await usage.get_translated_payload(tree, Translator())

    data = asyncio.run(payload())
    assert data["name"] == "usage"
    assert data["name_localizations"] == {}
    assert data["description_localizations"]["de"] == catalogue().entry(
        "de", "cmd.usage.description"
    )
    option = data["options"][0]
    assert option["description_localizations"]["ja"] == catalogue().entry(
        "ja", "cmd.usage.option.period"
    )
    daily = option["choices"][0]
    assert (daily["name"], daily["value"]) == ("daily", "daily")
    assert daily["name_localizations"]["de"] == "täglich"
    assert daily["name_localizations"]["es-419"] == daily["name_localizations"]["es-ES"]
    assert "en-GB" not in daily["name_localizations"]
