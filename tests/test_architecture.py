"""Dependencies point one way: faces -> session/pipeline -> core -> guardrails and speed-ups.

Every `import` in app.py and under streamchat/ (inside functions and TYPE_CHECKING blocks too)
is read from the source and checked against the table below, so a module that reaches the
wrong way fails here naming itself and the import.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.harness import REPO

PACKAGE = REPO / "streamchat"

# Each layer, by module-name prefix (the longest prefix wins).
LAYERS = {
    "app": "face",
    "streamchat.__main__": "face",
    "streamchat.faces": "face",
    "streamchat.classroom": "face",
    "streamchat.agent": "agent",
    "streamchat.chat": "session",
    "streamchat.pipeline": "session",
    "streamchat.runtime": "session",
    "streamchat.logs": "session",
    "streamchat.hosting": "hosting",
    "streamchat.settings": "settings",
    "streamchat.core": "core",
    "streamchat.guardrails": "guardrails",
    "streamchat.speedups": "speedups",
    "streamchat.offline": "offline",
    "streamchat.languages": "leaf",
    "streamchat": "leaf",  # the package itself: its version
}

# What each layer may import: layers, or single modules of another layer.
ALLOWED: dict[str, set[str]] = {
    # Faces take their runs from the session/pipeline, never from the guardrails directly.
    "face": {
        "face",
        "agent",
        "session",
        "core",
        "hosting",
        "settings",
        "speedups",
        "offline",
        "leaf",
    },
    # The agent's run (streamchat/agent) serves the faces: it builds on the session, the core
    # and the guardrails (tool steps are checked too) and knows no face; nothing below it
    # imports it.
    "agent": {"agent", "session", "core", "guardrails", "settings", "offline", "leaf"},
    "session": {"session", "core", "guardrails", "hosting", "settings", "offline", "leaf"},
    "hosting": {"hosting", "core", "settings", "leaf"},
    # Configuration builds the guardrails' and hosting's plain settings; of the core, only
    # its errors.
    "settings": {"settings", "guardrails", "hosting", "leaf", "streamchat.core.errors"},
    # The core takes plain values: never the settings, never a face.
    "core": {"core", "guardrails", "speedups", "leaf"},
    # The guardrails and the speed-ups know nothing of the app.
    "guardrails": {"guardrails"},
    "speedups": {"speedups"},
    # The offline model is a standalone server.
    "offline": {"offline", "speedups", "streamchat.languages"},
    "leaf": {"leaf"},
}

# Imports that break the rules today, each with the change that removes it. An entry that no
# longer matches an import fails `test_known_exceptions_are_still_needed`, so the list shrinks.
KNOWN_EXCEPTIONS: dict[tuple[str, str], str] = {}


def module_name(path: Path) -> str:
    relative = path.relative_to(REPO).with_suffix("")
    parts = relative.parts[:-1] if relative.name == "__init__" else relative.parts
    return ".".join(parts)


def modules() -> dict[str, Path]:
    found = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    found["app"] = REPO / "app.py"
    return found


def layer_of(module: str) -> str | None:
    for prefix in sorted(LAYERS, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return LAYERS[prefix]
    return None


def imports_of(module: str, path: Path, known: set[str]) -> Iterator[tuple[int, str]]:
    """(line, module imported) for every import of a streamchat module (or app) in `path`."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                # `from streamchat.classroom import ui` imports the module streamchat.classroom.ui
                submodule = f"{base}.{alias.name}"
                yield node.lineno, submodule if submodule in known else base


def allowed(importer_layer: str, imported: str) -> bool:
    rules = ALLOWED[importer_layer]
    imported_layer = layer_of(imported)
    return imported_layer in rules or any(
        imported == rule or imported.startswith(rule + ".") for rule in rules if "." in rule
    )


def violations() -> dict[tuple[str, str], str]:
    """(importer, imported) -> a line saying where and which rule, for every bad import."""
    found = modules()
    known = set(found)
    bad: dict[tuple[str, str], str] = {}
    for module, path in sorted(found.items()):
        importer_layer = layer_of(module)
        assert importer_layer is not None, f"{module} is in no layer: add it to LAYERS"
        for line, imported in imports_of(module, path, known):
            if imported != "app" and imported.split(".")[0] != "streamchat":
                continue
            if not allowed(importer_layer, imported):
                bad[(module, imported)] = (
                    f"{path.relative_to(REPO)}:{line} {module} ({importer_layer}) imports "
                    f"{imported} ({layer_of(imported)}); {importer_layer} may import only "
                    f"{', '.join(sorted(ALLOWED[importer_layer]))}"
                )
    return bad


def test_every_module_is_in_a_layer():
    unplaced = sorted(module for module in modules() if layer_of(module) is None)
    assert unplaced == []


def test_imports_point_one_way():
    bad = {key: where for key, where in violations().items() if key not in KNOWN_EXCEPTIONS}
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad.values()))


def test_known_exceptions_are_still_needed():
    gone = sorted(set(KNOWN_EXCEPTIONS) - set(violations()))
    assert gone == [], f"fixed, so remove from KNOWN_EXCEPTIONS: {gone}"


@pytest.mark.parametrize(
    ("module", "imported", "expected"),
    [
        ("app", "streamchat.guardrails", False),
        ("streamchat.faces.web", "streamchat.guardrails.config", False),
        ("streamchat.faces.web", "streamchat.pipeline", True),
        ("streamchat.classroom.ui", "streamchat.core.relay", True),
        ("streamchat.core.provider", "streamchat.settings", False),
        ("streamchat.core.sinks", "streamchat.faces.sse", False),
        ("streamchat.core.relay", "streamchat.guardrails", True),
        ("streamchat.guardrails.policies", "streamchat.core.errors", False),
        ("streamchat.speedups.serving", "streamchat.settings", False),
        ("streamchat.speedups.serving", "streamchat.speedups.read_pacing", True),
        ("streamchat.settings", "streamchat.core.relay", False),
        ("streamchat.settings", "streamchat.core.errors", True),
        ("streamchat.offline.server", "streamchat.core.types", False),
        ("streamchat.faces.web", "streamchat.agent.run", True),
        ("streamchat.agent.run", "streamchat.runtime", True),
        ("streamchat.agent.run", "streamchat.guardrails", True),
        ("streamchat.agent.tools", "streamchat.offline.lessons", True),
        ("streamchat.agent.tools", "streamchat.faces.cli", False),
        ("streamchat.agent.steps", "streamchat.classroom.ui", False),
        ("streamchat.core.relay", "streamchat.agent.run", False),
        ("streamchat.pipeline", "streamchat.agent.run", False),
        ("streamchat.guardrails.guard", "streamchat.agent.tools", False),
    ],
)
def test_the_table_says_who_may_import_whom(module, imported, expected):
    layer = layer_of(module)
    assert layer is not None
    assert allowed(layer, imported) is expected
