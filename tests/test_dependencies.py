"""The dependency surface: every package the code imports is declared, packages whose internals
the speed-ups touch are bounded below their next minor release, and constraints.txt pins every
declared package, so a fresh install gets the versions the tests ran on."""

from __future__ import annotations

import ast
import os
import re
import sys
import tomllib
from importlib.metadata import PackageNotFoundError, packages_distributions, version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from tests.harness import REPO

PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
RUNTIME = [Requirement(text) for text in PROJECT["dependencies"]]
TESTING = [Requirement(text) for text in PROJECT["optional-dependencies"]["test"]]

# Packages whose private names streamchat/speedups (or a fenced spot elsewhere) relies on.
INTERNALS_TOUCHED = {
    "chainlit",
    "openai",
    "httpx2",
    "aiohttp",
    "fastapi",
    "starlette",
    "uvicorn",
    "python-socketio",
    "python-engineio",
    "uvloop",
}


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def third_party_imports(paths: list[Path]) -> set[str]:
    found: set[str] = set()
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in {"streamchat", "tests"}:
                    found.add(top)
    return found


def distributions_of(modules: set[str]) -> dict[str, set[str]]:
    owners = packages_distributions()
    return {module: {canonical(d) for d in owners.get(module, [])} for module in modules}


def declared(requirements: list[Requirement]) -> set[str]:
    return {canonical(r.name) for r in requirements}


@pytest.mark.parametrize(
    ("where", "requirements"),
    [
        (["streamchat", "app.py"], RUNTIME),
        (["tests", "benchmarks"], RUNTIME + TESTING),
    ],
    ids=["app", "tests-and-benchmarks"],
)
def test_every_imported_package_is_declared(where, requirements):
    paths: list[Path] = []
    for item in where:
        root = REPO / item
        paths += [root] if root.is_file() else sorted(root.rglob("*.py"))
    undeclared = {
        module: owners
        for module, owners in distributions_of(third_party_imports(paths)).items()
        if not owners & declared(requirements)
    }
    assert not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"


def test_packages_whose_internals_we_touch_are_bounded_below_the_next_minor():
    by_name = {canonical(r.name): r for r in RUNTIME}
    for name in sorted(INTERNALS_TOUCHED):
        requirement = by_name.get(name)
        assert requirement is not None, f"{name} is not declared"
        uppers = [s for s in requirement.specifier if s.operator in ("<", "==")]
        assert uppers, f"{name} has no upper bound: {requirement}"
        for spec in uppers:
            parts = spec.version.split(".")
            assert spec.operator == "==" or len(parts) >= 2, f"{name}: bound {spec} is too loose"


def pinned_versions() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints.txt").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, pinned = line.partition("==")
            assert pinned, f"constraints.txt: {line!r} is not an exact pin"
            pins[canonical(name)] = pinned
    return pins


def test_constraints_pin_every_declared_package():
    pins = pinned_versions()
    for requirement in RUNTIME + TESTING:
        name = canonical(requirement.name)
        assert name in pins, f"{name} is declared but not pinned in constraints.txt"
        assert requirement.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {name}=={pins[name]}, outside {requirement.specifier}"
        )


def test_installed_versions_are_the_pinned_ones_in_ci():
    """CI installs with -c constraints.txt: what the tests run on is what is pinned."""
    if os.environ.get("CI") != "true":
        pytest.skip("only CI is sure to have installed from constraints.txt")
    pins = pinned_versions()
    for requirement in RUNTIME + TESTING:
        if requirement.marker is not None and not requirement.marker.evaluate():
            continue
        name = canonical(requirement.name)
        try:
            installed = version(name)
        except PackageNotFoundError:
            pytest.fail(f"{name} is declared but not installed")
        assert installed == pins[name], f"{name} {installed} is installed, {pins[name]} pinned"


def test_readme_test_command_is_the_one_ci_runs():
    readme = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", readme, flags=re.S)
    commands = [line for block in blocks for line in block.splitlines() if "pip install" in line]
    assert len(commands) == 2, f"the README should have two set-up commands, has {commands}"
    test_command = next(c for c in commands if "pytest" in c)
    assert "-c constraints.txt" in test_command and all("-c constraints.txt" in c for c in commands)
    ci = (REPO / ".ci" / "run").read_text()
    assert test_command.replace("pip install", "pip install -q") in ci
