"""The installed package (``pip install .``, the README's run command) has every module."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_python_package_is_listed_for_installation() -> None:
    """Each folder of bot/ and cogs/ with an __init__.py is in [tool.setuptools] packages:
    an editable install (what the tests use) would hide a missing one."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(config["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("bot", "cogs")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found <= listed, f"not installed: {sorted(found - listed)}"


def test_data_files_are_listed_for_installation() -> None:
    """Migrations and message catalogues ship with the package."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    data = config["tool"]["setuptools"]["package-data"]["bot"]
    assert "migrations/*.sql" in data and "locales/*.toml" in data
