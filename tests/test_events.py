"""Every event the bot dispatches carries one frozen value, which its listeners name.

``bot.dispatch(name, *args)`` is discord.py's untyped channel between cogs: whatever is
passed reaches each ``on_<name>`` listener unchecked. So every dispatch in ``bot/`` and
``cogs/`` passes exactly one value, and every listener of that event takes one
parameter annotated with a frozen dataclass, owned by the part the event is about
(``quota_change``: :class:`bot.ledger.QuotaChanged`). mypy then checks both ends against
that one type.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from discord.ext import commands

from tests.test_layers import GRAPH


@dataclass(frozen=True, slots=True)
class Dispatch:
    module: str
    line: int
    event: str
    values: int  # positional values after the name; -1 when unpacked or by keyword


def dispatches() -> list[Dispatch]:
    """Every ``<something>.dispatch(name, ...)`` call, its event name resolved."""
    found: list[Dispatch] = []
    for module, path in GRAPH.modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "dispatch"
                and node.args
            ):
                continue
            name, *values = node.args
            if isinstance(name, ast.Constant) and isinstance(name.value, str):
                event = name.value
            elif isinstance(name, ast.Name):
                event = getattr(importlib.import_module(module), name.id)
            else:
                event = ast.unparse(name)
            plain = not node.keywords and not any(isinstance(v, ast.Starred) for v in values)
            found.append(Dispatch(module, node.lineno, event, len(values) if plain else -1))
    return found


def listeners(event: str) -> list[Callable[..., Any]]:
    """The ``on_<event>`` listeners of every cog in ``cogs/``."""
    found: list[Callable[..., Any]] = []
    for module in GRAPH.modules:
        if not module.startswith("cogs."):
            continue
        for cls in vars(importlib.import_module(module)).values():
            if isinstance(cls, type) and issubclass(cls, commands.Cog) and cls.__module__ == module:
                found += [
                    getattr(cls, method)
                    for name, method in cls.__cog_listeners__
                    if name == f"on_{event}"
                ]
    return found


DISPATCHES = dispatches()
EVENTS = sorted({d.event for d in DISPATCHES})


def test_the_scan_finds_the_quota_change_and_its_listener() -> None:
    """The scan sees a known dispatch and the cog that listens to it."""
    assert "quota_change" in EVENTS
    assert [f.__qualname__ for f in listeners("quota_change")] == ["Owner.on_quota_change"]


def test_every_dispatch_sends_one_value() -> None:
    """``dispatch(name, value)``: one positional value, no more, nothing unpacked."""
    assert [d for d in DISPATCHES if d.values != 1] == []


@pytest.mark.parametrize("event", EVENTS)
def test_every_listener_takes_one_frozen_value(event: str) -> None:
    """Each listener of a dispatched event has one parameter besides ``self``, annotated
    with a frozen dataclass."""
    found = listeners(event)
    assert found, f"nothing listens to {event}"
    for listener in found:
        parameters = list(inspect.signature(listener).parameters)[1:]
        assert len(parameters) == 1, listener.__qualname__
        value = typing.get_type_hints(listener)[parameters[0]]
        assert dataclasses.is_dataclass(value), listener.__qualname__
        assert vars(value)["__dataclass_params__"].frozen, listener.__qualname__
