"""Which part of the project may import which.

The parts are the rooms of ``bot/`` (``bot.ledger``, ``bot.jobs``...), its shared leaf
modules, ``cogs`` and ``discord``. Every module's imports are read with :mod:`ast`: all
of them, inside functions and ``TYPE_CHECKING`` blocks too, since each one is a
dependency. :data:`MAY_IMPORT` is the rule; a new room gets a row before it may import
anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Shared leaves: any part may import them, and they import no part.
LEAVES = frozenset({"bot", "bot.failures", "bot.i18n", "bot.logs", "bot.retry", "bot.timings"})
# The core works without the process, Discord or the cogs (and is tested that way).
CORE = frozenset({"bot.db", "bot.images", "bot.jobs", "bot.ledger", "bot.onemin"})
ABOVE_CORE = frozenset({"bot.app", "bot.frontend", "cogs", "discord"})
# Each part and the parts it may import besides the leaves (and itself).
MAY_IMPORT: dict[str, frozenset[str]] = {
    "bot.db": frozenset(),
    "bot.ledger": frozenset({"bot.db"}),
    "bot.onemin": frozenset({"bot.db"}),
    "bot.images": frozenset({"bot.ledger"}),  # the /usage chart draws the ledger's report
    "bot.jobs": frozenset({"bot.db", "bot.images", "bot.ledger", "bot.onemin"}),
    "bot.app": CORE | {"bot.frontend", "discord"},
    "bot.frontend": CORE | {"bot.app", "discord"},
    "cogs": CORE | {"bot.app", "bot.frontend", "discord"},
    "bot.__main__": frozenset({"bot.app"}),
    **{leaf: frozenset() for leaf in LEAVES},
}


def modules() -> dict[str, Path]:
    """Every module of ``bot/`` and ``cogs/`` by its dotted name (a package by its own)."""
    found: dict[str, Path] = {}
    for path in sorted([*ROOT.glob("bot/**/*.py"), *ROOT.glob("cogs/**/*.py")]):
        parts = path.relative_to(ROOT).with_suffix("").parts
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = modules()


def part_of(module: str) -> str | None:
    """The part a dotted module name belongs to; None outside the project and discord."""
    top, *rest = module.split(".")
    if top in ("cogs", "discord"):
        return top
    if top != "bot":
        return None
    return "bot" if not rest else f"bot.{rest[0]}"


def imported(source: str) -> set[str]:
    """The modules ``source`` imports (``from bot import images`` imports ``bot.images``)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                names.add(submodule if submodule in MODULES else node.module)
    return names


def test_the_scan_sees_every_kind_of_import() -> None:
    """Plain, from-, function-local and TYPE_CHECKING imports, and submodules imported by
    name from their package, are each found."""
    source = (
        "import discord.ui\n"
        "from typing import TYPE_CHECKING\n"
        "from bot import images\n"
        "if TYPE_CHECKING:\n"
        "    from bot.app.settings import Settings\n"
        "def later() -> None:\n"
        "    from cogs.messages import something\n"
    )
    parts = {part_of(name) for name in imported(source)}
    assert parts == {"discord", None, "bot.images", "bot.app", "cogs"}


def test_every_part_has_a_row() -> None:
    """A module outside every row (a new room) fails until the table places it."""
    unplaced = {part_of(name) for name in MODULES} - set(MAY_IMPORT)
    assert not unplaced


def test_the_core_may_import_neither_the_process_nor_discord() -> None:
    """No row of the core allows bot.app, bot.frontend, cogs or discord."""
    assert {part: sorted(MAY_IMPORT[part] & ABOVE_CORE) for part in CORE} == {
        part: [] for part in CORE
    }


@pytest.mark.parametrize("part", sorted(MAY_IMPORT))
def test_each_part_imports_only_what_its_row_allows(part: str) -> None:
    """Every import of the part's modules lands in the part itself, a leaf, or a part its
    row names."""
    allowed = MAY_IMPORT[part] | LEAVES | {part}
    wrong = sorted(
        f"{module} imports {name}"
        for module, path in MODULES.items()
        if part_of(module) == part
        for name in imported(path.read_text(encoding="utf-8"))
        if part_of(name) not in allowed | {None}
    )
    assert not wrong
