"""The project's import graph: which part may import which, and no cycle anywhere.

The parts are the rooms of ``bot/`` (``bot.ledger``, ``bot.jobs``...), its shared leaf
modules, ``cogs`` and ``discord``. Every module's imports are read with :mod:`ast`: all
of them, inside functions and ``TYPE_CHECKING`` blocks too, since each one is a
dependency (a type-only import is one a reader and mypy must follow). An import names a
module of the project when ``from bot.x import y`` finds ``bot/x/y.py``, else the module
it is taken from (``bot.x``).

The rules: :data:`TIERS` orders the parts from the leaves up to the process
(``bot.app``), which builds everything; :data:`MAY_IMPORT` says which part may import
which, and allows nothing that points upward. On top of the table: nothing below the
front end (``bot.frontend`` and ``cogs``) imports discord, nothing below the process
imports its settings, and no module takes part in an import cycle. A failure prints the
graph's figures (:meth:`ImportGraph.figures`).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Shared leaves: any part may import them, and they import no part.
LEAVES = frozenset({"bot", "bot.failures", "bot.i18n", "bot.logs", "bot.retry", "bot.timings"})
# The core works without the process, Discord or the cogs (and is tested that way).
CORE = frozenset({"bot.db", "bot.images", "bot.jobs", "bot.ledger", "bot.onemin"})
FRONT_END = frozenset({"bot.frontend", "cogs"})
ABOVE_CORE = frozenset({"bot.app", "bot.frontend", "cogs", "discord"})
# The parts from the bottom up; an import from a part to one in a higher tier points upward.
TIERS: tuple[frozenset[str], ...] = (
    LEAVES,
    frozenset({"bot.db"}),
    frozenset({"bot.ledger", "bot.onemin"}),
    frozenset({"bot.images"}),  # the /usage chart draws the ledger's report
    frozenset({"bot.jobs"}),
    frozenset({"bot.frontend"}),
    frozenset({"cogs"}),
    frozenset({"bot.app"}),  # the process: settings, services, start-up; builds the bot
    frozenset({"bot.__main__"}),
)
# Each part and the parts it may import besides the leaves (and itself).
MAY_IMPORT: dict[str, frozenset[str]] = {
    "bot.db": frozenset(),
    "bot.ledger": frozenset({"bot.db"}),
    "bot.onemin": frozenset({"bot.db"}),
    "bot.images": frozenset({"bot.ledger"}),
    "bot.jobs": frozenset({"bot.db", "bot.images", "bot.ledger", "bot.onemin"}),
    "bot.frontend": CORE | {"discord"},
    "cogs": CORE | {"bot.frontend", "discord"},
    "bot.app": CORE | {"bot.frontend", "discord"},
    "bot.__main__": frozenset({"bot.app"}),
    **{leaf: frozenset() for leaf in LEAVES},
}
SETTINGS = "bot.app.settings"  # the process's settings: read there, handed down as values


def part_of(module: str) -> str | None:
    """The part a dotted module name belongs to; None outside the project and discord."""
    top, *rest = module.split(".")
    if top in ("cogs", "discord"):
        return top
    if top != "bot":
        return None
    return "bot" if not rest else f"bot.{rest[0]}"


def tier_of(module: str) -> int:
    """The tier of a module of the project (:data:`TIERS`); a part no tier places counts
    as above them all."""
    part = part_of(module)
    return next((n for n, tier in enumerate(TIERS) if part in tier), len(TIERS))


def imported(source: str, known: Iterable[str]) -> set[str]:
    """The modules ``source`` imports; ``from bot import images`` imports ``bot.images``
    when it is one of the ``known`` modules."""
    modules = set(known)
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                names.add(submodule if submodule in modules else node.module)
    return names


@dataclass(frozen=True, slots=True)
class ImportGraph:
    """Every module of ``bot/`` and ``cogs/`` and what each imports."""

    modules: dict[str, Path]  # by dotted name (a package by its own)
    imports: dict[str, frozenset[str]]  # every name each module imports, external ones too

    @classmethod
    def scan(cls, root: Path) -> ImportGraph:
        modules: dict[str, Path] = {}
        for path in sorted([*root.glob("bot/**/*.py"), *root.glob("cogs/**/*.py")]):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
        imports = {
            module: frozenset(imported(path.read_text(encoding="utf-8"), modules))
            for module, path in modules.items()
        }
        return cls(modules, imports)

    def edges(self) -> Iterator[tuple[str, str]]:
        """Each import of one module of the project by another, once."""
        for module, names in sorted(self.imports.items()):
            for name in sorted(names):
                if name in self.modules and name != module:
                    yield module, name

    def upward(self) -> list[tuple[str, str]]:
        """The imports that point to a higher tier."""
        return [(a, b) for a, b in self.edges() if tier_of(b) > tier_of(a)]

    def cycles(self) -> list[list[str]]:
        """The import cycles: each group of modules that reach one another (Tarjan's
        strongly connected components of more than one module), sorted."""
        successors: dict[str, list[str]] = {module: [] for module in self.modules}
        for a, b in self.edges():
            successors[a].append(b)
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        found: list[list[str]] = []

        def visit(module: str) -> None:
            index[module] = low[module] = len(index)
            stack.append(module)
            on_stack.add(module)
            for successor in successors[module]:
                if successor not in index:
                    visit(successor)
                    low[module] = min(low[module], low[successor])
                elif successor in on_stack:
                    low[module] = min(low[module], index[successor])
            if low[module] == index[module]:
                group: list[str] = []
                while not group or group[-1] != module:
                    group.append(stack.pop())
                    on_stack.discard(group[-1])
                if len(group) > 1:
                    found.append(sorted(group))

        for module in self.modules:
            if module not in index:
                visit(module)
        return sorted(found)

    def importers(self, target: str, below: int) -> list[str]:
        """The modules under tier ``below`` that import ``target`` or a submodule of it."""
        return sorted(
            f"{module} imports {name}"
            for module, names in self.imports.items()
            if tier_of(module) < below
            for name in names
            if name == target or name.startswith(f"{target}.")
        )

    def figures(self) -> str:
        """The graph in figures, for failure messages and before/after comparisons."""
        packages = sum(path.name == "__init__.py" for path in self.modules.values())
        cycles = self.cycles()
        lines = [
            f"{packages} packages, {len(self.modules)} modules, {len(list(self.edges()))}"
            f" imports between them, {len(self.upward())} pointing upward,"
            f" {len(cycles)} cycles ({sum(map(len, cycles))} modules in them)",
            *(f"  upward: {a} -> {b}" for a, b in self.upward()),
            *(f"  cycle: {' <-> '.join(group)}" for group in cycles),
        ]
        return "\n".join(lines)


GRAPH = ImportGraph.scan(ROOT)
FRONT_END_TIER = min(tier_of(part) for part in FRONT_END)
PROCESS_TIER = tier_of("bot.app")


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
    names = imported(source, GRAPH.modules)
    assert {part_of(name) for name in names} == {"discord", None, "bot.images", "bot.app", "cogs"}
    assert SETTINGS in names


def test_the_cycle_search_finds_a_cycle_through_a_function_local_import() -> None:
    """Two modules that import each other, one of them inside a function, are a cycle;
    a module that only imports is in none."""
    graph = ImportGraph(
        {"bot.db.a": Path("a.py"), "bot.db.b": Path("b.py"), "bot.db.c": Path("c.py")},
        {
            "bot.db.a": frozenset(imported("from bot.db.b import x", ["bot.db.b"])),
            "bot.db.b": frozenset(imported("def f() -> None:\n    import bot.db.a", [])),
            "bot.db.c": frozenset(imported("from bot.db.a import y", ["bot.db.a"])),
        },
    )
    assert graph.cycles() == [["bot.db.a", "bot.db.b"]]


def test_every_part_has_a_row_and_a_tier() -> None:
    """A module outside every row (a new room) fails until the table places it."""
    parts = {part_of(name) for name in GRAPH.modules}
    unplaced = parts - set(MAY_IMPORT) | parts - set().union(*TIERS)
    assert not unplaced, GRAPH.figures()


def test_no_row_allows_an_import_that_points_upward() -> None:
    """Each row names only parts of its own tier or below (discord aside)."""
    upward = {
        part: sorted(allowed)
        for part, row in MAY_IMPORT.items()
        if (allowed := {p for p in row - {"discord"} if tier_of(p) > tier_of(part)})
    }
    assert not upward


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
        for module, names in GRAPH.imports.items()
        if part_of(module) == part
        for name in names
        if part_of(name) not in allowed | {None}
    )
    assert not wrong, GRAPH.figures()


def test_nothing_below_the_front_end_imports_discord() -> None:
    """The core and the leaves work (and are tested) without discord.py."""
    wrong = GRAPH.importers("discord", below=FRONT_END_TIER)
    assert not wrong, GRAPH.figures()


def test_nothing_below_the_process_imports_its_settings() -> None:
    """The process reads the settings and hands each part the values it needs
    (``QueueConfig``, the front end's ``BotSettings``...); no part below reads them."""
    wrong = GRAPH.importers(SETTINGS, below=PROCESS_TIER)
    assert not wrong, GRAPH.figures()


def test_no_import_points_upward() -> None:
    """Every import goes to the importer's own tier or below."""
    upward = GRAPH.upward()
    assert not upward, GRAPH.figures()


def test_no_module_is_in_an_import_cycle() -> None:
    """No module of bot/ or cogs/ reaches itself through its imports, however indirect,
    type-only or function-local they are."""
    cycles = GRAPH.cycles()
    assert not cycles, GRAPH.figures()
