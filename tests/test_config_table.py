"""Every variable is declared once (settings.VARIABLES), documented in `.env.example` and the
README's table, read by the one reader, and parsed the same way as every other of its kind."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from dotenv import dotenv_values

from streamchat.core.errors import ConfigError
from streamchat.settings import (
    FALSE_WORDS,
    TRUE_WORDS,
    VARIABLES,
    ConfigReader,
    Settings,
    Variable,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = {k: v or "" for k, v in dotenv_values(ROOT / ".env.example").items()}
SOURCES = {
    path: path.read_text()
    for path in sorted((ROOT / "streamchat").rglob("*.py"))
    if "offline" not in path.parts or path.name != "__main__.py"
}


def figure(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def of_kind(*kinds: str) -> list[Variable]:
    return [v for v in VARIABLES.values() if v.kind in kinds]


def readme_table() -> dict[str, str]:
    """The README's configuration table: variable name -> its Default cell."""
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("| Variable | Default | Meaning |") + 2
    rows: dict[str, str] = {}
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        found = re.match(r"\| `([A-Z0-9_]+)` \| (.*?) \|", line)
        assert found, f"a README table row that names no variable: {line[:60]}"
        assert found[1] not in rows, f"{found[1]} appears twice in the README's table"
        rows[found[1]] = found[2]
    return rows


# --- documented once --------------------------------------------------------------------------


def test_every_declared_variable_is_in_env_example_and_nothing_else_is():
    assert set(VARIABLES) - set(EXAMPLE) == set(), "declared but missing from .env.example"
    assert set(EXAMPLE) - set(VARIABLES) == set(), "in .env.example but not declared"


def test_every_declared_variable_is_in_the_readme_table_and_nothing_else_is():
    documented = set(readme_table())
    assert set(VARIABLES) - documented == set(), "declared but missing from the README's table"
    assert documented - set(VARIABLES) == set(), "in the README's table but not declared"


def test_env_example_shows_the_declared_defaults_and_keeps_the_offline_model():
    for name, value in EXAMPLE.items():
        assert value in ("", VARIABLES[name].default), f"{name}: .env.example differs"
    assert Settings.from_env(EXAMPLE).offline


@pytest.mark.parametrize(
    "variable",
    [v for v in of_kind("flag", "number", "whole", "choice", "list") if v.default],
    ids=lambda v: v.name,
)
def test_readme_states_the_declared_default(variable):
    assert readme_table()[variable.name] == f"`{variable.default}`"


def test_settings_defaults_are_the_declared_ones():
    assert Settings.from_env({}) == Settings()


# --- read in one place, by one reader -----------------------------------------------------------


def reads_of_the_environment(tree: ast.AST) -> list[int]:
    """Lines that read the environment directly: os.environ, getenv, dotenv, env.get("X") or
    environ["X"] (comments and strings that mention them do not count)."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv"):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            names += [alias.name for alias in node.names]
            if any(name.split(".")[0] == "dotenv" for name in names):
                lines.append(node.lineno)
        elif isinstance(node, ast.Call | ast.Subscript):
            target = node.func if isinstance(node, ast.Call) else node
            owner = target.value if isinstance(target, ast.Attribute | ast.Subscript) else None
            is_read = isinstance(node, ast.Subscript) or (
                isinstance(target, ast.Attribute) and target.attr == "get"
            )
            if is_read and isinstance(owner, ast.Name) and owner.id in ("env", "environ"):
                lines.append(node.lineno)
    return lines


def test_only_settings_reads_the_environment():
    readers = {
        f"{path.relative_to(ROOT)}:{line}"
        for path, text in SOURCES.items()
        if path.name != "settings.py"
        for line in reads_of_the_environment(ast.parse(text))
    }
    assert readers == set()


def test_every_variable_read_is_declared_and_every_declared_one_is_read():
    readers = {"text", "url", "flag", "number", "whole", "choice", "items"}
    read = set()
    for text in SOURCES.values():
        for node in ast.walk(ast.parse(text)):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            first = node.args[0] if node.args else None
            if name in readers and isinstance(first, ast.Constant) and str(first.value).isupper():
                read.add(first.value)
    assert read - set(VARIABLES) == set(), "read but not declared"
    assert set(VARIABLES) - read == set(), "declared but never read"


def test_a_variable_cannot_be_read_undeclared_or_as_another_kind():
    with pytest.raises(KeyError):
        ConfigReader({}).text("NOT_DECLARED")
    with pytest.raises(TypeError):
        ConfigReader({}).number("SHOW_METRICS")


# --- booleans --------------------------------------------------------------------------------

FLAG_WORDS = [
    (word, value)
    for words, value in ((TRUE_WORDS, True), (FALSE_WORDS, False))
    for base in words
    for word in {base, base.upper(), base.capitalize(), f" {base} "}
]


@pytest.mark.parametrize("variable", of_kind("flag"), ids=lambda v: v.name)
def test_every_boolean_accepts_every_true_and_false_word(variable):
    assert set(TRUE_WORDS) | set(FALSE_WORDS) == {
        "true",
        "false",
        "yes",
        "no",
        "on",
        "off",
        "1",
        "0",
    }
    for word, value in FLAG_WORDS:
        assert ConfigReader({variable.name: word}).flag(variable.name) is value, word


@pytest.mark.parametrize("variable", of_kind("flag"), ids=lambda v: v.name)
def test_every_boolean_rejects_other_words_in_the_same_words(variable):
    for word in ("maybe", "2", "enabled", "y", "t"):
        with pytest.raises(ConfigError) as info:
            ConfigReader({variable.name: word}).flag(variable.name)
        assert str(info.value) == (
            f"{variable.name} must be true or false, or yes/no, on/off, 1/0 (got {word!r})."
        )


@pytest.mark.parametrize("variable", of_kind("flag"), ids=lambda v: v.name)
def test_a_blank_boolean_is_its_default(variable):
    default = ConfigReader({}).flag(variable.name)
    assert default is (variable.default == "true")
    assert ConfigReader({variable.name: "  "}).flag(variable.name) is default


# Where Settings uses a boolean, its words mean the same as in the reader.
CONSUMERS = {
    "STREAM_READ_PACING": lambda env: Settings.from_env(env).read_pacing,
    "SHOW_METRICS": lambda env: Settings.from_env(env).show_metrics,
    "GUARDRAILS_LOCKED": lambda env: Settings.from_env(env).guardrails.locked,
}


@pytest.mark.parametrize("name", sorted(CONSUMERS))
@pytest.mark.parametrize(("word", "value"), [("on", True), ("OFF", False), ("Yes", True)])
def test_where_a_boolean_is_used_every_word_means_the_same(name, word, value):
    assert CONSUMERS[name]({name: word}) is value


# --- numbers, choices, lists -------------------------------------------------------------------


@pytest.mark.parametrize("variable", of_kind("number", "whole"), ids=lambda v: v.name)
def test_numbers_reject_values_out_of_range_naming_the_variable(variable):
    read = ConfigReader.number if variable.kind == "number" else ConfigReader.whole
    low = variable.low if variable.low is not None else 0
    bad = [str(int(low) - 1), "many", "inf"]
    if variable.high is not None:
        bad.append(str(int(variable.high) + 1))
    if variable.kind == "whole":
        bad.append(f"{figure(low)}.5")
    for raw in bad:
        with pytest.raises(ConfigError) as info:
            read(ConfigReader({variable.name: raw}), variable.name)
        assert str(info.value) == f"{variable.name} must be {variable.accepts} (got {raw!r})."
    assert read(ConfigReader({variable.name: figure(low)}), variable.name) == low
    if variable.high is not None:
        high = read(ConfigReader({variable.name: figure(variable.high)}), variable.name)
        assert high == variable.high


@pytest.mark.parametrize("variable", of_kind("choice"), ids=lambda v: v.name)
def test_choices_are_case_insensitive_and_others_are_refused(variable):
    for choice in variable.choices:
        for spelled in (choice.lower(), choice.upper(), f" {choice.capitalize()} "):
            assert ConfigReader({variable.name: spelled}).choice(variable.name) == choice
    with pytest.raises(ConfigError) as info:
        ConfigReader({variable.name: "neither"}).choice(variable.name)
    assert str(info.value) == (
        f"{variable.name} must be one of {', '.join(variable.choices)} (got 'neither')."
    )


def test_lists_are_comma_separated_with_blanks_and_repeats_dropped():
    read = ConfigReader({"GUARDRAILS": " PII, ,secrets,,pii ", "ALLOW_ORIGINS": ",https://a.io,"})
    assert read.items("GUARDRAILS") == ("pii", "secrets")
    assert read.items("ALLOW_ORIGINS") == ("https://a.io",)
    for off in ("off", "NONE", "false", "0"):
        assert ConfigReader({"GUARDRAILS": off}).items("GUARDRAILS") == ()
    with pytest.raises(ConfigError, match=r"^GUARDRAILS must be a comma-separated list of pii"):
        ConfigReader({"GUARDRAILS": "pii,magic"}).items("GUARDRAILS")
