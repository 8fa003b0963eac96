"""The installed package has every module, and the locks it is installed from (the
README's run command, .ci/run) pin every dependency that pyproject.toml names."""

from __future__ import annotations

import re
import shlex
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# packaging comes with pytest (a dependency of it), so the test lock always has it.
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_LOCK = ROOT / "requirements" / "runtime.txt"
TEST_LOCK = ROOT / "requirements" / "test.txt"


def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_every_python_package_is_listed_for_installation() -> None:
    """Each folder of bot/ and cogs/ with an __init__.py is in [tool.setuptools] packages:
    an editable install (what the tests use) would hide a missing one."""
    listed = set(pyproject()["tool"]["setuptools"]["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for top in ("bot", "cogs")
        for init in (ROOT / top).rglob("__init__.py")
    }
    assert found <= listed, f"not installed: {sorted(found - listed)}"


def test_data_files_are_listed_for_installation() -> None:
    """Migrations and message catalogues ship with the package."""
    data = pyproject()["tool"]["setuptools"]["package-data"]["bot"]
    assert "migrations/*.sql" in data and "locales/*.toml" in data


# -- the locks ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pin:
    version: str
    hashes: frozenset[str]


# One entry of a lock: "name==version[ ; marker] \\" at the start of a line, then its
# "--hash=sha256:..." lines (indented, like the "# via" comments).
_ENTRY = re.compile(r"^(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?P<spec>[^;\\]*)", re.MULTILINE)
_HASH = re.compile(r"--hash=(sha256:[0-9a-f]{64})")


def read_lock(path: Path) -> dict[str, Pin]:
    """Each package of a lock by its normalised name. An entry that is not an exact pin
    (``==``) has version ``""``, so the tests below report it."""
    text = path.read_text(encoding="utf-8")
    entries = list(_ENTRY.finditer(text))
    pins: dict[str, Pin] = {}
    for entry, following in zip(entries, [*entries[1:], None], strict=True):
        body = text[entry.end() : following.start() if following else len(text)]
        spec = entry["spec"].strip()
        version = spec.removeprefix("==") if spec.startswith("==") else ""
        pins[canonicalize_name(entry["name"])] = Pin(version, frozenset(_HASH.findall(body)))
    return pins


def named(requirements: list[str]) -> dict[str, Requirement]:
    parsed = (Requirement(r) for r in requirements)
    return {canonicalize_name(r.name): r for r in parsed}


def unpinned(lock: dict[str, Pin], wanted: dict[str, Requirement]) -> list[str]:
    """What of ``wanted`` the lock lacks, pins loosely, pins outside its range, or pins
    without a hash."""
    wrong = []
    for name, requirement in sorted(wanted.items()):
        pin = lock.get(name)
        if pin is None or not pin.version:
            wrong.append(f"{name}: not pinned")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            wrong.append(f"{name}=={pin.version}: outside {requirement.specifier}")
        elif not pin.hashes:
            wrong.append(f"{name}=={pin.version}: no hash")
    return wrong


def test_the_runtime_lock_pins_every_runtime_dependency_in_range_with_hashes() -> None:
    """pyproject.toml's dependencies, each at one version its range allows, hash-checked."""
    wanted = named(pyproject()["project"]["dependencies"])
    assert unpinned(read_lock(RUNTIME_LOCK), wanted) == []


def test_the_test_lock_pins_the_runtime_and_test_dependencies_in_range_with_hashes() -> None:
    """The dependencies and the test extra, each at one version its range allows."""
    project = pyproject()["project"]
    wanted = named([*project["dependencies"], *project["optional-dependencies"]["test"]])
    assert unpinned(read_lock(TEST_LOCK), wanted) == []


def test_every_package_in_the_locks_is_pinned_exactly_with_hashes() -> None:
    """Dependencies of dependencies too: ``pip install --require-hashes`` refuses a lock
    with a single package left loose or without its hash."""
    loose = [
        f"{path.name}: {name}"
        for path in (RUNTIME_LOCK, TEST_LOCK)
        for name, pin in read_lock(path).items()
        if not pin.version or not pin.hashes
    ]
    assert loose == []


def test_the_test_lock_holds_the_runtime_lock_unchanged() -> None:
    """The tests run on the very versions (and files) the bot is installed with."""
    runtime, test = read_lock(RUNTIME_LOCK), read_lock(TEST_LOCK)
    differ = [name for name, pin in runtime.items() if test.get(name) != pin]
    assert differ == []


# -- what installs from them -------------------------------------------------------------


def pip_installs(script: str) -> list[list[str]]:
    """The arguments of each ``pip install`` in a shell script."""
    installs = []
    for line in script.replace("\\\n", " ").splitlines():
        for command in line.split("&&"):
            words = shlex.split(command, comments=True)
            installs += [
                words[at + 2 :]
                for at, word in enumerate(words)
                if Path(word).name == "pip" and words[at + 1 : at + 2] == ["install"]
            ]
    return installs


def test_the_readme_run_command_installs_the_runtime_lock_then_the_bot_alone() -> None:
    """One line, from "4. Run": the lock hash-checked, then the project with --no-deps
    (installing it with its dependencies would resolve them again, past the lock)."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("### 4. Run", 1)[1]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    assert block.count("\n") == 1, f"not one command line: {block!r}"
    installs = pip_installs(block)
    assert installs == [
        ["--require-hashes", "-r", "requirements/runtime.txt"],
        ["--no-deps", "."],
    ]


def test_ci_installs_the_test_lock_then_the_project_alone() -> None:
    """.ci/run (the README's test command): the test lock hash-checked, then the project
    with --no-deps."""
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    installs = [[w for w in i if w != "--quiet"] for i in pip_installs(script)]
    assert installs == [
        ["--require-hashes", "-r", "requirements/test.txt"],
        ["--no-deps", "-e", "."],
    ]
