"""The bot's words in the member's language: message catalogues, plurals and numbers.

Every user-facing text lives in ``bot/locales/<language>.toml`` under a dotted key
(``error.not_in_dms``, ``unit.credits``...). :func:`t` looks a key up for a Discord
locale and fills its named placeholders::

    t(interaction.locale.value, "cancel.done", count=1)   # "Cancelled. 1 credit refunded."
    t("de", "unit.credits", count=1000)                    # "1.000 Credits"

* Languages: :data:`SUPPORTED`. Other Discord locales get English; ``en-GB`` reads the
  English catalogue and ``es-419`` the Spanish one (:func:`resolve`).
* Placeholders are ``{name}`` only (no format specs). ``int`` and ``float`` values are
  written with the language's separators by :func:`number`; everything else with
  ``str()``. Discord timestamps (``<t:unix:R>``), mentions and sizes like ``"640×480"``
  are passed in already formatted, as strings.
* Plurals: a key may hold a table of CLDR categories (``one``, ``many``, ``other``);
  the ``count`` parameter picks the form (:func:`plural_category`).
* Missing keys or parameters raise ``KeyError`` in strict mode (tests:
  :func:`set_strict` or ``I18N_STRICT=1``); otherwise the English text is used and the
  problem logged, so a catalogue mistake never breaks a reply.

This module imports nothing from ``discord``; the command-description translator is in
:mod:`bot.frontend.translator`.
"""

from __future__ import annotations

import functools
import logging
import os
import string
import tomllib
from collections.abc import Iterator, Mapping
from importlib import resources
from typing import Any, NamedTuple, TypeAlias

log = logging.getLogger(__name__)

ENGLISH = "en-US"
SUPPORTED: tuple[str, ...] = ("en-US", "de", "fr", "es-ES", "pt-BR", "ja")
# Discord locales that read another catalogue (their members expect it).
ALIASES: Mapping[str, str] = {"en-GB": "en-US", "es-419": "es-ES"}

PLURAL_CATEGORIES = frozenset({"zero", "one", "two", "few", "many", "other"})
# Categories each language may (and, for one/other, must) use in a plural table.
ALLOWED_CATEGORIES: Mapping[str, frozenset[str]] = {
    "en-US": frozenset({"one", "other"}),
    "de": frozenset({"one", "other"}),
    "fr": frozenset({"one", "many", "other"}),
    "es-ES": frozenset({"one", "many", "other"}),
    "pt-BR": frozenset({"one", "many", "other"}),
    "ja": frozenset({"other"}),
}
REQUIRED_CATEGORIES: Mapping[str, frozenset[str]] = {
    lang: allowed - {"many"} for lang, allowed in ALLOWED_CATEGORIES.items()
}

# Thousands and decimal separators; ``min_grouping`` 2 means 4-digit numbers are not
# grouped (CLDR minimumGroupingDigits: Spanish writes 1000 but 10.000).
_NARROW_NBSP = "\u202f"
_NUMBER_FORMAT: Mapping[str, tuple[str, str, int]] = {
    "en-US": (",", ".", 1),
    "de": (".", ",", 1),
    "fr": (_NARROW_NBSP, ",", 1),
    "es-ES": (".", ",", 2),
    "pt-BR": (".", ",", 1),
    "ja": (",", ".", 1),
}

Entry: TypeAlias = str | dict[str, str]

_strict = os.environ.get("I18N_STRICT", "").lower() in ("1", "true", "yes")


class CatalogueError(ValueError):
    """A catalogue file is malformed (bad TOML, a mixed plural table, a bad placeholder)."""


def set_strict(strict: bool) -> None:
    """Raise ``KeyError`` for unknown keys or missing parameters instead of falling back."""
    global _strict
    _strict = strict


def resolve(locale: str | None) -> str:
    """The catalogue for a Discord locale (``"de"``, ``"pt-BR"``...): English when unsupported."""
    if not locale:
        return ENGLISH
    locale = str(locale)
    if locale in SUPPORTED:
        return locale
    if locale in ALIASES:
        return ALIASES[locale]
    lowered = locale.replace("_", "-").lower()
    for candidate in (*SUPPORTED, *ALIASES):
        if candidate.lower() == lowered:
            return resolve(candidate)
    return ENGLISH


# -- numbers and plurals -----------------------------------------------------------------


def number(locale: str | None, n: int | float, decimals: int | None = None) -> str:
    """``n`` with the language's separators: en 1,000.5; de 1.000,5; fr 1 000,5; es 1000.

    ``decimals`` fixes the digits after the separator; without it an ``int`` has none
    and a ``float`` up to two, trailing zeros dropped (2.50 -> "2.5", 3.0 -> "3").
    """
    group, point, min_grouping = _NUMBER_FORMAT[resolve(locale)]
    if decimals is not None:
        text = f"{abs(n):.{decimals}f}"
    elif isinstance(n, int):
        text = str(abs(n))
    else:
        text = f"{abs(n):.2f}".rstrip("0").rstrip(".")
    whole, _, fraction = text.partition(".")
    if len(whole) >= 3 + min_grouping:
        head = len(whole) % 3 or 3
        whole = group.join([whole[:head]] + [whole[i : i + 3] for i in range(head, len(whole), 3)])
    sign = "-" if n < 0 and text.strip("0.") else ""
    return sign + whole + (point + fraction if fraction else "")


def plural_category(locale: str | None, count: int) -> str:
    """The CLDR plural category of the whole number ``count`` in the language.

    en, de: one for 1. fr, pt-BR: one for 0 and 1. es-ES: one for 1. fr, es-ES, pt-BR:
    many for non-zero multiples of a million ("1 million de crédits"). ja: always other.
    """
    lang = resolve(locale)
    n = abs(int(count))
    if lang == "ja":
        return "other"
    if lang in ("fr", "pt-BR"):
        if n in (0, 1):
            return "one"
    elif n == 1:
        return "one"
    if lang in ("fr", "es-ES", "pt-BR") and n != 0 and n % 1_000_000 == 0:
        return "many"
    return "other"


# -- the catalogue -----------------------------------------------------------------------

_FORMATTER = string.Formatter()


def template_placeholders(text: str) -> frozenset[str]:
    """The ``{name}`` fields of a template; :class:`CatalogueError` for anything fancier."""
    names = set()
    try:
        parsed = list(_FORMATTER.parse(text))
    except ValueError as exc:
        raise CatalogueError(f"bad braces in {text!r}: {exc}") from None
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if not field.isidentifier() or spec or conversion:
            raise CatalogueError(
                f"placeholder {{{field}}} in {text!r}: use plain {{name}} fields only"
            )
        names.add(field)
    return frozenset(names)


def _flatten(table: Mapping[str, object], prefix: str, out: dict[str, Entry], source: str) -> None:
    for name, value in table.items():
        key = f"{prefix}{name}"
        if isinstance(value, str):
            out[key] = value
        elif isinstance(value, dict):
            categories = set(value) & PLURAL_CATEGORIES
            if categories and "other" in value:
                if set(value) != categories or not all(isinstance(v, str) for v in value.values()):
                    raise CatalogueError(f"{source}: {key} mixes plural forms and other keys")
                out[key] = dict(value)
            else:
                _flatten(value, f"{key}.", out, source)
        else:
            raise CatalogueError(f"{source}: {key} is neither text nor a table")


class Catalogue:
    """All languages' entries, flattened to dotted keys. Build once with :func:`catalogue`."""

    def __init__(self, languages: Mapping[str, Mapping[str, Entry]]) -> None:
        if ENGLISH not in languages:
            raise CatalogueError("the English catalogue is missing")
        self._languages = {lang: dict(entries) for lang, entries in languages.items()}
        for lang, entries in self._languages.items():
            for key, entry in entries.items():
                for text in entry.values() if isinstance(entry, dict) else (entry,):
                    try:
                        template_placeholders(text)
                    except CatalogueError as exc:
                        raise CatalogueError(f"{lang}: {key}: {exc}") from None

    @classmethod
    def from_toml(cls, texts: Mapping[str, str]) -> Catalogue:
        """Parse ``{language: toml text}``."""
        languages: dict[str, dict[str, Entry]] = {}
        for lang, text in texts.items():
            try:
                data = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise CatalogueError(f"{lang}.toml: {exc}") from None
            entries: dict[str, Entry] = {}
            _flatten(data, "", entries, f"{lang}.toml")
            languages[lang] = entries
        return cls(languages)

    @classmethod
    def load(cls) -> Catalogue:
        """Read ``bot/locales/<language>.toml`` for every supported language."""
        folder = resources.files("bot") / "locales"
        return cls.from_toml(
            {lang: (folder / f"{lang}.toml").read_text(encoding="utf-8") for lang in SUPPORTED}
        )

    @property
    def languages(self) -> tuple[str, ...]:
        return tuple(self._languages)

    def keys(self, locale: str = ENGLISH) -> Iterator[str]:
        """The keys of one language (English: every key the bot may use)."""
        return iter(self._languages.get(locale, {}))

    def __contains__(self, key: object) -> bool:
        return key in self._languages[ENGLISH]

    def entry(self, locale: str, key: str) -> Entry:
        """The raw text or plural table; ``KeyError`` when the language lacks the key."""
        return self._languages[locale][key]

    def is_plural(self, key: str, locale: str = ENGLISH) -> bool:
        return isinstance(self.entry(locale, key), dict)

    def placeholders(
        self, key: str, locale: str = ENGLISH, category: str | None = None
    ) -> frozenset[str]:
        """The placeholder names of a key (of one plural form, or of all of them)."""
        entry = self.entry(locale, key)
        if isinstance(entry, str):
            return template_placeholders(entry)
        if category is not None:
            return template_placeholders(entry[category])
        return frozenset().union(*(template_placeholders(text) for text in entry.values()))

    def template(self, locale: str, key: str, count: object = None) -> str:
        """The text to format: the plain entry, or the plural form ``count`` selects."""
        entry = self.entry(locale, key)
        if isinstance(entry, str):
            return entry
        if isinstance(count, int) and not isinstance(count, bool):
            category = plural_category(locale, count)
        else:
            category = "other"
        return entry.get(category) or entry["other"]


@functools.cache
def catalogue() -> Catalogue:
    """The bundled catalogue, read on first use and cached."""
    return Catalogue.load()


# -- formatting --------------------------------------------------------------------------


class _Params(dict[str, object]):
    def __missing__(self, name: str) -> object:
        raise KeyError(name)


def _format(locale: str, text: str, params: Mapping[str, object]) -> str:
    values = _Params()
    for name, value in params.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            values[name] = number(locale, value)
        else:
            values[name] = value
    return text.format_map(values)


def t(locale: str | None, key: str, /, **params: object) -> str:
    """The text of ``key`` in the member's language, placeholders filled from ``params``.

    ``count`` picks the plural form of plural keys. Unknown keys and missing parameters
    raise ``KeyError`` in strict mode; otherwise the English text is used (and if even
    that fails, the unformatted English template, or the key itself).
    """
    lang = resolve(locale)
    cat = catalogue()
    count = params.get("count")
    try:
        return _format(lang, cat.template(lang, key, count), params)
    except (KeyError, IndexError, ValueError) as exc:
        if _strict:
            raise KeyError(f"{lang}: {key}: {exc}") from exc
        log.error("Catalogue text %s for %s could not be formatted: %r", key, lang, exc)
    if lang != ENGLISH:
        try:
            return _format(ENGLISH, cat.template(ENGLISH, key, count), params)
        except (KeyError, IndexError, ValueError):
            pass
    try:
        return cat.template(ENGLISH, key, count)
    except KeyError:
        return key


def english(key: str, /, **params: object) -> str:
    """The English text of ``key`` (logs, audit rows, the source of command descriptions)."""
    return t(ENGLISH, key, **params)


# -- words not yet rendered ----------------------------------------------------------------


class Text(NamedTuple):
    """A catalogue key and its parameters: words to render later, in whichever language.

    Code that cannot know the reader's language (image checks, the job queue, errors
    raised deep in a command) returns or raises a ``Text``; the front end renders it for
    the member (``text.render(locale)``). A parameter that is itself a ``Text`` is
    rendered in the same language (``Text("failure.message", {"reason": Text(...)})``).

    A ``Text`` is picklable, and JSON-ready as ``[key, params]`` when its parameters are
    plain values (:meth:`from_json` reads that back). The empty key marks words already
    written (:meth:`verbatim`), e.g. an English note stored before the catalogue existed.
    """

    key: str
    params: dict[str, Any]

    @classmethod
    def of(cls, key: str, /, **params: object) -> Text:
        return cls(key, dict(params))

    @classmethod
    def verbatim(cls, words: str) -> Text:
        """Words shown as they are, whatever the language."""
        return cls("", {"text": words})

    def render(self, locale: str | None) -> str:
        """The words in the member's language (English when unsupported)."""
        if not self.key:
            return str(self.params.get("text", ""))
        params = {
            name: value.render(locale) if isinstance(value, Text) else value
            for name, value in self.params.items()
        }
        return t(locale, self.key, **params)

    def english(self) -> str:
        return self.render(ENGLISH)

    @classmethod
    def from_json(cls, value: object) -> Text:
        """A ``Text`` from its JSON form (``[key, params]``); a bare string is verbatim."""
        if isinstance(value, str):
            return cls.verbatim(value)
        if isinstance(value, list | tuple) and len(value) == 2 and isinstance(value[0], str):
            params = value[1] if isinstance(value[1], dict) else {}
            return cls(value[0], {str(k): v for k, v in params.items()})
        raise ValueError(f"not a Text: {value!r}")
